"""What the control commands answer (pure): frozen dataclasses, their JSON form and
the text the CLI prints.

Times are ISO 8601 strings (UTC) and ages are seconds, so a value is its JSON form
(`dataclasses.asdict`); `from_json` rebuilds it and raises `ProtocolError` on
anything else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from relay.control.protocol import ProtocolError

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class CertificateStatus:
    sha256: str
    subject: str
    not_after: str  # ISO 8601


@dataclass(frozen=True, slots=True)
class ListenerStatus:
    name: str  # the metrics label: kind and address
    kind: str
    address: str  # host:port
    tls: str
    serving: bool
    sessions: int | None  # None: not counted (HTTP)
    certificate: CertificateStatus | None  # None: no TLS on this listener


@dataclass(frozen=True, slots=True)
class CrlStatus:
    issuer: str
    this_update: str
    next_update: str | None
    age_seconds: float
    stale: bool


@dataclass(frozen=True, slots=True)
class AnchorStatus:
    ts: str
    seq: int
    hash: str
    reason: str
    file: str


@dataclass(frozen=True, slots=True)
class IssuerStatus:
    issuer: str
    source: str  # the JWKS URL or file
    keys: int
    key_ids: tuple[str, ...]
    age_seconds: float | None  # None: never loaded (keys are loaded at the first login)
    fetches: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class StatusReport:
    version: str
    pid: int
    config_file: str
    started_at: str
    uptime_seconds: float
    listeners: tuple[ListenerStatus, ...]
    queue_depth: int | None  # None: the store did not answer
    queue_oldest_age_seconds: float | None
    crls: tuple[CrlStatus, ...]
    audit_rows: int | None
    last_anchor: AnchorStatus | None
    issuer: IssuerStatus | None  # None: no token issuer configured


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """One open IMAP or SMTP session, as a listener describes it (`who`)."""

    protocol: str  # imap | smtp
    listener: str  # the listener's name
    person: str | None  # None: not authenticated (yet)
    box: str | None  # the box acted as or selected
    client: str  # the client's address
    since: str  # ISO 8601, when the connection was made
    tls: str | None  # "TLSv1.3", or None in clear text (before STARTTLS)


@dataclass(frozen=True, slots=True)
class WhoReport:
    sessions: tuple[SessionFacts, ...]


@dataclass(frozen=True, slots=True)
class KickReport:
    person: str
    box: str | None
    imap: int  # sessions ended with BYE
    smtp: int  # connections closed with 421


@dataclass(frozen=True, slots=True)
class ReloadReport:
    applied: bool
    config_file: str
    changes: tuple[str, ...]  # what was applied, one line each
    problems: tuple[str, ...]  # why it was refused

    def __bool__(self) -> bool:
        """True when applied: `assert await daemon.reload()` keeps its meaning."""
        return self.applied


@dataclass(frozen=True, slots=True)
class UpstreamSyncReport:
    """One complete round (replay, then every folder compared) of a hosted box."""

    box: str
    complete: bool  # False: the round could not happen (see state) or took too long
    state: str  # the box's sync state after the round ("idle", "unreachable", ...)
    rounds: int  # complete rounds since the daemon started
    seconds: float  # how long this one took, from the request


# --- JSON ----------------------------------------------------------------------------


def to_json(value: Any) -> dict[str, Any]:
    data: dict[str, Any] = dataclasses.asdict(value)
    return data


def _build(cls: Callable[..., _T], data: Any) -> _T:
    if not isinstance(data, dict):
        raise ProtocolError(f"expected an object for {getattr(cls, '__name__', cls)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ProtocolError(f"malformed {getattr(cls, '__name__', cls)}: {exc}") from None


def _many(cls: Callable[..., _T], data: Any) -> tuple[_T, ...]:
    if not isinstance(data, list):
        raise ProtocolError("expected a list")
    return tuple(_build(cls, item) for item in data)


def _nested(data: dict[str, Any], **builders: Callable[[Any], Any]) -> dict[str, Any]:
    out = dict(data)
    for name, build in builders.items():
        if out.get(name) is not None:
            out[name] = build(out[name])
    return out


def status_from_json(data: Any) -> StatusReport:
    if not isinstance(data, dict):
        raise ProtocolError("expected an object for StatusReport")

    def listener(d: Any) -> ListenerStatus:
        if not isinstance(d, dict):
            raise ProtocolError("expected an object for ListenerStatus")
        return _build(
            ListenerStatus, _nested(d, certificate=lambda c: _build(CertificateStatus, c))
        )

    fields = _nested(
        data,
        listeners=lambda x: tuple(listener(d) for d in x) if isinstance(x, list) else (),
        crls=lambda x: _many(CrlStatus, x),
        last_anchor=lambda x: _build(AnchorStatus, x),
        issuer=lambda x: _build(IssuerStatus, _nested(x, key_ids=tuple)),
    )
    return _build(StatusReport, fields)


def who_from_json(data: Any) -> WhoReport:
    if not isinstance(data, dict):
        raise ProtocolError("expected an object for WhoReport")
    return WhoReport(_many(SessionFacts, data.get("sessions")))


def kick_from_json(data: Any) -> KickReport:
    return _build(KickReport, data)


def upstream_sync_from_json(data: Any) -> UpstreamSyncReport:
    return _build(UpstreamSyncReport, data)


def reload_from_json(data: Any) -> ReloadReport:
    if not isinstance(data, dict):
        raise ProtocolError("expected an object for ReloadReport")
    return _build(ReloadReport, _nested(data, changes=tuple, problems=tuple))


# --- text ----------------------------------------------------------------------------


def age(seconds: float | None) -> str:
    """`3d 4h`, `2h 5m`, `4m 10s`, `12s`; `-` for None."""
    if seconds is None:
        return "-"
    s = int(max(seconds, 0))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {s}s"
    return f"{s}s"


def _when(iso: str | None) -> str:
    if iso is None:
        return "-"
    return dt.datetime.fromisoformat(iso).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def render_status(r: StatusReport) -> str:
    lines = [
        f"mss-relay {r.version}, pid {r.pid}, up {age(r.uptime_seconds)} "
        f"(since {_when(r.started_at)}), config {r.config_file}",
        "listeners:",
    ]
    for lst in r.listeners:
        state = "up" if lst.serving else "DOWN"
        sessions = "-" if lst.sessions is None else str(lst.sessions)
        line = f"  {lst.kind:10} {lst.address:21} tls {lst.tls:8} {state:4} sessions {sessions}"
        if lst.certificate is not None:
            cert = lst.certificate
            line += f"  cert sha256 {cert.sha256} expires {_when(cert.not_after)}"
        lines.append(line)
    depth = "?" if r.queue_depth is None else str(r.queue_depth)
    lines.append(f"queue: {depth} waiting, oldest {age(r.queue_oldest_age_seconds)}")
    if r.crls:
        lines.append("CRLs:")
        for crl in r.crls:
            stale = "  STALE" if crl.stale else ""
            lines.append(
                f"  {crl.issuer}: age {age(crl.age_seconds)}, "
                f"next update {_when(crl.next_update)}{stale}"
            )
    else:
        lines.append("CRLs: none configured (no revocation check)")
    rows = "?" if r.audit_rows is None else str(r.audit_rows)
    if r.last_anchor is not None:
        a = r.last_anchor
        lines.append(
            f"audit: {rows} rows; last anchor {_when(a.ts)} seq {a.seq} hash {a.hash[:16]}… "
            f"({a.reason}, {a.file})"
        )
    else:
        lines.append(f"audit: {rows} rows; not anchored yet")
    if r.issuer is not None:
        i = r.issuer
        error = f"; last error: {i.last_error}" if i.last_error else ""
        loaded = "not loaded yet" if i.age_seconds is None else f"age {age(i.age_seconds)}"
        lines.append(
            f"token issuer {i.issuer}: {i.keys} keys ({', '.join(i.key_ids) or '-'}), "
            f"{loaded}, {i.fetches} loads from {i.source}{error}"
        )
    return "\n".join(lines)


def render_who(r: WhoReport) -> str:
    if not r.sessions:
        return "no sessions"
    header = f"{'PROTO':5} {'PERSON':12} {'BOX':34} {'CLIENT':15} {'SINCE':20} {'TLS':8} LISTENER"
    rows = [header]
    for s in r.sessions:
        rows.append(
            f"{s.protocol:5} {s.person or '-':12} {s.box or '-':34} {s.client:15} "
            f"{_when(s.since):20} {s.tls or 'none':8} {s.listener}"
        )
    return "\n".join(rows)


def render_kick(r: KickReport) -> str:
    where = f" on {r.box}" if r.box else ""
    total = r.imap + r.smtp
    if not total:
        return f"{r.person}{where}: no open session"
    return f"{r.person}{where}: {r.imap} IMAP and {r.smtp} SMTP sessions cut"


def render_upstream_sync(r: UpstreamSyncReport) -> str:
    if r.complete:
        return f"{r.box}: synced with its operator in {r.seconds:.1f} s (state {r.state})"
    return (
        f"{r.box}: no complete sync after {r.seconds:.1f} s (state {r.state}); "
        f"`mss-relay upstream status {r.box}` shows the last error"
    )


def render_reload(r: ReloadReport) -> str:
    if not r.applied:
        head = f"reload refused: {r.config_file} (the running config stays)"
        return "\n".join([head, *r.problems])
    if not r.changes:
        return f"reloaded {r.config_file}: no change"
    head = f"reloaded {r.config_file}: {len(r.changes)} changes applied"
    return "\n".join([head, *(f"  {c}" for c in r.changes)])


def sessions_sorted(sessions: Sequence[SessionFacts]) -> tuple[SessionFacts, ...]:
    return tuple(sorted(sessions, key=lambda s: (s.since, s.protocol, s.client)))
