"""relay.metrics alone: audit events to counters, states to gauges, the text format
read back by prometheus_client's parser (pure)."""

from __future__ import annotations

import datetime as dt

from prometheus_client.parser import text_string_to_metric_families

from relay.audit.events import (
    AuthFailed,
    DaemonStarted,
    DeliveryBounced,
    DeliveryDeferred,
    DeliveryDelivered,
    MessageAccepted,
    MessageRefused,
)
from relay.metrics import CommandResult, CrlFact, Metrics, Sample, listener_name

NOW = dt.datetime(2027, 3, 1, 12, tzinfo=dt.UTC)


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_audit_events_drive_the_message_delivery_and_login_counters() -> None:
    m = Metrics(version="9.9")
    accepted = MessageAccepted(
        protocol="smtp-submission",
        message_id=None,
        sender="a@x",
        recipients=("b@x",),
        size_bytes=1,
        queue_id="q",
    )
    refused = MessageRefused(
        protocol="smtp-inbound", stage="rcpt", reason="550", rule="patient.size"
    )
    unnamed = MessageRefused(protocol="smtp-inbound", stage="data", reason="554")
    common = {
        "queue_id": "q",
        "recipient": "r@y",
        "sender": "a@x",
        "message_id": None,
        "attempts": 1,
    }
    m.committed(
        5,
        0.004,
        [
            accepted,
            refused,
            unnamed,
            DeliveryDelivered(**common),  # type: ignore[arg-type]
            DeliveryDeferred(**common, reason="421", next_attempt="t"),  # type: ignore[arg-type]
            DeliveryBounced(**common, reason="550"),  # type: ignore[arg-type]
            AuthFailed(protocol="imap", mechanism="PLAIN", login="x", reason="bad password"),
            DaemonStarted(version="9.9", config_file="c"),
        ],
    )
    s = samples(m)
    msg = "mssrelay_messages_total"
    assert (
        s[
            (
                msg,
                (
                    ("outcome", "accepted"),
                    ("protocol", "smtp-submission"),
                    ("rule", ""),
                    ("stage", "data"),
                ),
            )
        ]
        == 1
    )
    assert (
        s[
            (
                msg,
                (
                    ("outcome", "refused"),
                    ("protocol", "smtp-inbound"),
                    ("rule", "patient.size"),
                    ("stage", "rcpt"),
                ),
            )
        ]
        == 1
    )
    assert (
        s[
            (
                msg,
                (
                    ("outcome", "refused"),
                    ("protocol", "smtp-inbound"),
                    ("rule", ""),
                    ("stage", "data"),
                ),
            )
        ]
        == 1
    )
    for result in ("delivered", "deferred", "bounced"):
        assert s[("mssrelay_deliveries_total", (("result", result),))] == 1
    assert s[("mssrelay_logins_total", (("protocol", "imap"), ("result", "failed")))] == 1
    assert s[("mssrelay_audit_events_total", (("action", "daemon.started"),))] == 1
    assert s[("mssrelay_group_commit_units_count", ())] == 1
    assert s[("mssrelay_group_commit_units_sum", ())] == 5
    assert s[("mssrelay_group_commit_units_bucket", (("le", "4.0"),))] == 0
    assert s[("mssrelay_group_commit_units_bucket", (("le", "8.0"),))] == 1
    assert s[("mssrelay_group_commit_seconds_bucket", (("le", "0.005"),))] == 1
    assert not any(name.endswith("_created") for name, _ in s)


def test_listener_probe_counts_connections_sessions_and_commands() -> None:
    m = Metrics()
    probe = m.listener("imap", "::1", 993)
    assert probe.name == "imap [::1]:993" == listener_name("imap", "::1", 993)
    probe.opened()
    probe.opened()
    probe.closed()
    probe.command("SELECT", CommandResult.OK)
    probe.command("SELECT", CommandResult.OK)
    probe.command("SELECT", CommandResult.NO)
    s = samples(m)
    label = (("listener", "imap [::1]:993"),)
    assert s[("mssrelay_connections_total", label)] == 2
    assert s[("mssrelay_sessions", label)] == 1
    key = "mssrelay_commands_total"
    assert s[(key, (("command", "SELECT"), ("listener", "imap [::1]:993"), ("result", "ok")))] == 2
    assert s[(key, (("command", "SELECT"), ("listener", "imap [::1]:993"), ("result", "no")))] == 1


def test_smtp_result_classes() -> None:
    assert [CommandResult.of_smtp(c) for c in (250, 354, 421, 550, None)] == [
        "ok",
        "ok",
        "tempfail",
        "permfail",
        "ok",
    ]


def test_states_are_set_from_a_sample_and_old_issuers_leave() -> None:
    m = Metrics()
    crl = CrlFact("CN=A", NOW - dt.timedelta(hours=2), NOW + dt.timedelta(hours=22), False)
    m.apply(
        Sample(
            queue_depth=3,
            queue_oldest=NOW - dt.timedelta(minutes=10),
            audit_rows=42,
            crls=[crl, CrlFact("CN=B", NOW, None, True)],
            listeners_up=[("imap 127.0.0.1:993", True), ("inbound 127.0.0.1:25", False)],
            checks=[("store", True), ("crl", False)],
            now=NOW,
        )
    )
    s = samples(m)
    assert s[("mssrelay_queue_depth", ())] == 3
    assert s[("mssrelay_queue_oldest_age_seconds", ())] == 600
    assert s[("mssrelay_audit_rows", ())] == 42
    assert s[("mssrelay_crl_age_seconds", (("issuer", "CN=A"),))] == 7200
    assert (
        s[("mssrelay_crl_next_update_timestamp_seconds", (("issuer", "CN=A"),))]
        == (NOW + dt.timedelta(hours=22)).timestamp()
    )
    assert ("mssrelay_crl_next_update_timestamp_seconds", (("issuer", "CN=B"),)) not in s
    assert s[("mssrelay_crl_stale", (("issuer", "CN=B"),))] == 1
    assert s[("mssrelay_listener_up", (("listener", "inbound 127.0.0.1:25"),))] == 0
    assert s[("mssrelay_health_check", (("check", "crl"),))] == 0
    # the next scrape: B gone, the queue unreadable (kept), empty queue age 0
    m.apply(Sample(None, None, None, [crl], [], [], NOW))
    s = samples(m)
    assert ("mssrelay_crl_age_seconds", (("issuer", "CN=B"),)) not in s
    assert s[("mssrelay_queue_depth", ())] == 3 and s[("mssrelay_audit_rows", ())] == 42
    m.apply(Sample(0, None, 43, [crl], [], [], NOW))
    assert samples(m)[("mssrelay_queue_oldest_age_seconds", ())] == 0


def test_each_daemon_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.listener("imap", "127.0.0.1", 1).opened()
    assert (
        samples(b).get(("mssrelay_connections_total", (("listener", "imap 127.0.0.1:1"),))) is None
    )
