"""The daemon's metrics: one Prometheus registry per daemon, one place per concept.

Each daemon owns a `Metrics` (its own `CollectorRegistry`, never prometheus_client's
global one: tests run several daemons in one process, and a library importing
prometheus_client must not leak its collectors into ours). The components call it at
one place per concept:

- connections and sessions: the listener's accept and close (`ListenerProbe`);
- commands by kind and result: the SMTP and IMAP command dispatch (`ListenerProbe`);
- group commits (units per commit, latency) and every committed audit event: the
  store's writer (`Metrics.committed`). Messages accepted and refused by rule,
  deliveries by result and logins are counted from the audit events of a commit
  (`AUDIT_COUNTERS`), so a counter moves exactly when the fact is durable and the
  servers carry no second bookkeeping;
- what is a state rather than an event (queue depth and age, CRL ages, audit rows,
  listeners up, health checks): set from a `Sample` just before each scrape
  (`Metrics.apply`), by the HTTP edge that gathered it.

Hot paths stay cheap: label children are bound once per listener and command (a dict
lookup and a locked add per call), and nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from relay.audit.events import (
    AuditEvent,
    AuthFailed,
    AuthSucceeded,
    DeliveryBounced,
    DeliveryDeferred,
    DeliveryDelivered,
    DeliveryReportQueued,
    MessageAccepted,
    MessageRefused,
)

__all__ = [
    "AUDIT_COUNTERS",
    "CONTENT_TYPE",
    "CommandResult",
    "CrlFact",
    "ListenerProbe",
    "Metrics",
    "Sample",
    "listener_name",
]

PREFIX = "mssrelay"
CONTENT_TYPE = CONTENT_TYPE_LATEST  # the text format prometheus_client writes

# No `*_created` series: they double the output and say only when the process
# started (`mssrelay_start_time_seconds` does). A process-wide switch of the library;
# the daemon is its only user.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Units handed to one group commit: 1 .. MAX_BATCH_UNITS (256) in powers of two.
COMMIT_UNIT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Commit latency: an fsync is ~0.1-10 ms on SSDs, PostgreSQL adds a round trip; a
# second or more is a sick disk.
COMMIT_SECONDS_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class CommandResult:
    """The `result` label of `mssrelay_commands_total`."""

    OK = "ok"  # SMTP 2xx/3xx, IMAP OK
    TEMPFAIL = "tempfail"  # SMTP 4xx
    PERMFAIL = "permfail"  # SMTP 5xx
    NO = "no"  # IMAP NO
    BAD = "bad"  # IMAP BAD
    ERROR = "error"  # the server failed (a bug, a lost store): answered 451 / NO [SERVERBUG]

    @staticmethod
    def of_smtp(code: int | None) -> str:
        """The result of an SMTP command from its last reply code (RFC 5321 §4.2.1)."""
        if code is None:
            return CommandResult.OK  # nothing said (the connection closed): not a refusal
        if code >= 500:
            return CommandResult.PERMFAIL
        if code >= 400:
            return CommandResult.TEMPFAIL
        return CommandResult.OK


def listener_name(kind: str, host: str, port: int) -> str:
    """The `listener` label: kind and address, e.g. ``imap 127.0.0.1:993``."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"{kind} {address}"


@dataclass(frozen=True, slots=True)
class CrlFact:
    """One CRL in use, as the CRL refresher holds it."""

    issuer: str
    this_update: dt.datetime
    next_update: dt.datetime | None
    stale: bool


@dataclass(frozen=True, slots=True)
class Sample:
    """The states read just before a scrape (by the HTTP edge)."""

    # None: could not be read (the store health check says why); the gauge keeps its
    # last value
    queue_depth: int | None  # recipients waiting (queued, deferred, being sent)
    queue_oldest: dt.datetime | None  # acceptance time of the oldest waiting one
    audit_rows: int | None  # the audit chain's head sequence number
    crls: Sequence[CrlFact]
    listeners_up: Sequence[tuple[str, bool]]
    checks: Sequence[tuple[str, bool]]  # health check name, passing
    now: dt.datetime


class ListenerProbe:
    """What one listener reports: connections, open sessions, commands.

    Bound to the listener's label once; `command` caches a child per (command,
    result) pair, so a command costs a dict lookup and an increment."""

    __slots__ = ("_commands", "_connections", "_metrics", "_sessions", "name")

    def __init__(self, metrics: Metrics, name: str) -> None:
        self._metrics = metrics
        self.name = name
        self._connections = metrics.connections.labels(listener=name)
        self._sessions = metrics.sessions.labels(listener=name)
        self._commands: dict[tuple[str, str], Counter] = {}
        self._sessions.set(0)

    def opened(self) -> None:
        self._connections.inc()
        self._sessions.inc()

    def closed(self) -> None:
        self._sessions.dec()

    def command(self, command: str, result: str) -> None:
        """Count one command. `command` must come from a fixed set (the server's
        dispatch table), never straight from the peer: labels are not free."""
        child = self._commands.get((command, result))
        if child is None:
            child = self._metrics.commands.labels(
                listener=self.name, command=command, result=result
            )
            self._commands[(command, result)] = child
        child.inc()


class Metrics:
    """The metrics of one daemon, in a registry of their own."""

    def __init__(self, *, version: str = "") -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, labels, registry=r)

        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, labels, registry=r)

        self.build = gauge("build_info", "Always 1; the version is in the label.", ["version"])
        self.build.labels(version=version).set(1)
        self.started = gauge("start_time_seconds", "When the daemon started (Unix time).")
        self.started.set(time.time())
        # listeners
        self.connections = counter(
            "connections", "Connections accepted, by listener.", ["listener"]
        )
        self.sessions = gauge("sessions", "Connections open now, by listener.", ["listener"])
        self.commands = counter(
            "commands",
            "SMTP and IMAP commands by listener, command and result "
            "(ok, tempfail, permfail, no, bad, error).",
            ["listener", "command", "result"],
        )
        self.listener_up = gauge(
            "listener_up", "1 while the listener accepts connections.", ["listener"]
        )
        # message flow, from the audit events of each commit
        self.messages = counter(
            "messages",
            "Messages accepted or refused, by protocol, outcome, stage and policy rule "
            '("" when no named rule refused it).',
            ["protocol", "outcome", "stage", "rule"],
        )
        self.deliveries = counter(
            "deliveries",
            "Outbound delivery attempts per recipient, by result "
            "(delivered, deferred, bounced), and DSNs queued (dsn).",
            ["result"],
        )
        self.logins = counter(
            "logins", "Authentications by protocol and result.", ["protocol", "result"]
        )
        self.audit_events = counter(
            "audit_events", "Audit events committed, by action.", ["action"]
        )
        self.audit_rows = gauge("audit_rows", "Rows in the audit chain (its head sequence).")
        # the store's writer
        self.commit_units = Histogram(
            f"{PREFIX}_group_commit_units",
            "Units (acceptances, changes, audit records) committed together.",
            buckets=COMMIT_UNIT_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            f"{PREFIX}_group_commit_seconds",
            "Time from a batch's start to its durable commit.",
            buckets=COMMIT_SECONDS_BUCKETS,
            registry=r,
        )
        self.commit_failures = counter(
            "group_commit_failures", "Group commits that failed (their units got errors)."
        )
        # the queue
        self.queue_depth = gauge(
            "queue_depth", "Recipients waiting for outbound delivery (queued, deferred, sending)."
        )
        self.queue_oldest_age = gauge(
            "queue_oldest_age_seconds",
            "Age of the oldest waiting recipient's message (0 when the queue is empty).",
        )
        # CRLs
        self.crl_age = gauge(
            "crl_age_seconds", "Seconds since the thisUpdate of the CRL in use.", ["issuer"]
        )
        self.crl_next_update = gauge(
            "crl_next_update_timestamp_seconds",
            "nextUpdate of the CRL in use (Unix time); past it plus the grace, TLS with "
            "certificates of that issuer fails closed.",
            ["issuer"],
        )
        self.crl_stale = gauge(
            "crl_stale", "1 when the issuer's CRL is past nextUpdate + grace.", ["issuer"]
        )
        # health
        self.health = gauge("health_check", "1 when the health check passes.", ["check"])
        # key rotation (mss-relay key rotate)
        self.reencrypt_remaining = gauge(
            "key_reencrypt_remaining_blobs",
            "Blobs still sealed with a retiring key (0 when no rotation is running).",
        )
        self.reencrypted = counter(
            "key_reencrypted_blobs", "Blobs re-encrypted with the newest key."
        )
        # label children already made: `labels()` costs a lock and a tuple build per
        # call, a dict lookup does not (the writer calls this after every commit)
        self._children: dict[tuple[object, ...], Counter] = {}

    def child(self, counter: Counter, *values: str) -> Counter:
        """`counter.labels(*values)`, cached."""
        key = (id(counter), *values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = counter.labels(*values)
        return found

    # --- events -------------------------------------------------------------------

    def listener(self, kind: str, host: str, port: int) -> ListenerProbe:
        return ListenerProbe(self, listener_name(kind, host, port))

    def committed(self, units: int, seconds: float, events: Iterable[AuditEvent]) -> None:
        """One group commit is durable: its size, its latency and its audit events."""
        self.commit_units.observe(units)
        self.commit_seconds.observe(seconds)
        for ev in events:
            self.child(self.audit_events, ev.ACTION).inc()
            count = AUDIT_COUNTERS.get(type(ev))
            if count is not None:
                count(self, ev)

    # --- states -------------------------------------------------------------------

    def apply(self, s: Sample) -> None:
        """Set the gauges that describe a state, from what the edge just read."""
        if s.queue_depth is not None:
            self.queue_depth.set(s.queue_depth)
            self.queue_oldest_age.set(
                max((s.now - s.queue_oldest).total_seconds(), 0.0) if s.queue_oldest else 0.0
            )
        if s.audit_rows is not None:
            self.audit_rows.set(s.audit_rows)
        for gauge in (self.crl_age, self.crl_next_update, self.crl_stale):
            gauge.clear()  # an issuer no longer in use leaves the output
        for crl in s.crls:
            self.crl_age.labels(issuer=crl.issuer).set((s.now - crl.this_update).total_seconds())
            if crl.next_update is not None:
                self.crl_next_update.labels(issuer=crl.issuer).set(crl.next_update.timestamp())
            self.crl_stale.labels(issuer=crl.issuer).set(1 if crl.stale else 0)
        self.listener_up.clear()
        for name, up in s.listeners_up:
            self.listener_up.labels(listener=name).set(1 if up else 0)
        for check, passing in s.checks:
            self.health.labels(check=check).set(1 if passing else 0)

    def render(self) -> bytes:
        """The Prometheus text exposition format (version 0.0.4)."""
        return generate_latest(self.registry)


# --- audit events → counters ------------------------------------------------------------


def _accepted(m: Metrics, ev: AuditEvent) -> None:
    assert isinstance(ev, MessageAccepted)
    m.child(m.messages, ev.protocol, "accepted", "data", "").inc()


def _refused(m: Metrics, ev: AuditEvent) -> None:
    assert isinstance(ev, MessageRefused)
    m.child(m.messages, ev.protocol, "refused", ev.stage, ev.rule or "").inc()


def _delivery(result: str) -> Callable[[Metrics, AuditEvent], None]:
    def count(m: Metrics, _ev: AuditEvent) -> None:
        m.child(m.deliveries, result).inc()

    return count


def _login(m: Metrics, ev: AuditEvent) -> None:
    assert isinstance(ev, AuthSucceeded | AuthFailed)
    result = "succeeded" if isinstance(ev, AuthSucceeded) else "failed"
    m.child(m.logins, ev.protocol, result).inc()


AUDIT_COUNTERS: dict[type[AuditEvent], Callable[[Metrics, AuditEvent], None]] = {
    MessageAccepted: _accepted,
    MessageRefused: _refused,
    DeliveryDelivered: _delivery("delivered"),
    DeliveryDeferred: _delivery("deferred"),
    DeliveryBounced: _delivery("bounced"),
    DeliveryReportQueued: _delivery("dsn"),
    AuthSucceeded: _login,
    AuthFailed: _login,
}
