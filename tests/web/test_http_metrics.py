"""/metrics and /healthz over a real socket, scraped with curl, parsed with
prometheus_client's own parser; both engines."""

from __future__ import annotations

import asyncio
import imaplib
import time
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from relay.metrics import listener_name
from tests.harness import DUPONT_BOX, MARTIN_BOX, PASSWORDS, RunningDaemon
from tests.smtp.test_submission import letter, submit
from tests.web.conftest import curl

BAD_INS = "29510991261119" + "0"  # key 93 expected: the rule patient.ins-invalid refuses it


async def scrape(d: RunningDaemon) -> dict[str, list[Sample]]:
    status, head, body = await curl(f"http://127.0.0.1:{d.ports['http']}/metrics")
    assert status == 200
    assert "content-type: text/plain; version=" in head.lower()
    found: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def value(found: dict[str, list[Sample]], name: str, **labels: str) -> float:
    matching = [
        s.value for s in found.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert matching, f"no sample {name} {labels}; have {[s.labels for s in found.get(name, [])]}"
    return float(sum(matching))


async def eventually(check: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_scrape_counts_what_happened(web: RunningDaemon) -> None:
    d = web
    code, _ = await asyncio.to_thread(
        submit,
        d,
        "martin",
        PASSWORDS["martin"],
        MARTIN_BOX,
        [DUPONT_BOX],
        letter(MARTIN_BOX, DUPONT_BOX),
    )
    assert code == 250
    bad = f"{BAD_INS}@patient.mssante.fr"
    code, _ = await asyncio.to_thread(
        submit, d, "martin", PASSWORDS["martin"], MARTIN_BOX, [bad], letter(MARTIN_BOX, bad)
    )
    assert code == 550

    def imap_session() -> None:
        with imaplib.IMAP4_SSL(
            "127.0.0.1", d.ports["imap-tls"], ssl_context=d.client_context()
        ) as c:
            c.login("dupont", PASSWORDS["dupont"])
            c.select("INBOX")
            try:
                c.xatom("FROBNICATE")  # not a command: BAD, counted as a parse failure
            except imaplib.IMAP4.error as exc:
                assert "BAD" in str(exc)
            else:
                raise AssertionError("FROBNICATE accepted")
            c.logout()

    await asyncio.to_thread(imap_session)
    submission = listener_name("submission", "127.0.0.1", d.ports["submission"])
    imap = listener_name("imap", "127.0.0.1", d.ports["imap-tls"])

    # sessions are counted down when the server sees the close: wait for that
    async def settled() -> dict[str, list[Sample]]:
        for _ in range(200):
            found = await scrape(d)
            if (
                value(found, "mssrelay_sessions", listener=submission) == 0
                and value(found, "mssrelay_sessions", listener=imap) == 0
            ):
                return found
            await asyncio.sleep(0.1)
        raise AssertionError("sessions never went back to 0")

    m = await settled()
    assert value(m, "mssrelay_connections_total", listener=submission) == 2
    assert value(m, "mssrelay_connections_total", listener=imap) == 1
    # SMTP commands by their final reply; IMAP by their tagged status
    assert (
        value(m, "mssrelay_commands_total", listener=submission, command="MAIL", result="ok") == 2
    )
    assert (
        value(m, "mssrelay_commands_total", listener=submission, command="DATA", result="ok") == 1
    )
    assert (
        value(m, "mssrelay_commands_total", listener=submission, command="RCPT", result="permfail")
        == 1
    )
    assert value(m, "mssrelay_commands_total", listener=imap, command="SELECT", result="ok") == 1
    assert (
        value(
            m, "mssrelay_commands_total", listener=imap, command="(unknown-command)", result="bad"
        )
        == 1
    )
    # messages by outcome and rule, from the committed audit events
    assert value(m, "mssrelay_messages_total", outcome="accepted", protocol="smtp-submission") == 1
    assert (
        value(
            m,
            "mssrelay_messages_total",
            outcome="refused",
            stage="rcpt",
            rule="patient.ins-invalid",
        )
        == 1
    )
    assert value(m, "mssrelay_logins_total", protocol="imap", result="succeeded") == 1
    # the writer: every commit observed, sizes and latencies
    assert value(m, "mssrelay_group_commit_units_count") == d.store.commits
    assert value(m, "mssrelay_group_commit_seconds_count") == d.store.commits
    assert value(m, "mssrelay_group_commit_units_bucket", le="+Inf") == d.store.commits
    # states read at the scrape
    seq, _ = await d.store.audit_head()
    assert value(m, "mssrelay_audit_rows") == seq
    assert value(m, "mssrelay_queue_depth") == 0
    assert value(m, "mssrelay_queue_oldest_age_seconds") == 0
    ages = m["mssrelay_crl_age_seconds"]
    assert ages and all(0 <= s.value < 86400 * 400 for s in ages)
    assert {s.labels["check"]: s.value for s in m["mssrelay_health_check"]} == {
        "store": 1,
        "writer": 1,
        "crl": 1,
        "listeners": 1,
    }
    assert len(m["mssrelay_listener_up"]) == 6 and all(
        s.value == 1 for s in m["mssrelay_listener_up"]
    )
    assert value(m, "mssrelay_build_info", version="0.1.0") == 1


async def test_queue_depth_and_age(web: RunningDaemon) -> None:
    """A message for a remote domain waits in the queue: depth and age show it."""
    d = web
    remote = "someone@peer.mssante.fr"
    await d.trust_peer()
    code, _ = await asyncio.to_thread(
        submit, d, "martin", PASSWORDS["martin"], MARTIN_BOX, [remote], letter(MARTIN_BOX, remote)
    )
    assert code == 250
    m = await scrape(d)
    assert value(m, "mssrelay_queue_depth") == 1
    assert value(m, "mssrelay_queue_oldest_age_seconds") >= 0


async def test_healthz_names_the_failing_check(web: RunningDaemon) -> None:
    d = web
    url = f"http://127.0.0.1:{d.ports['http']}/healthz"
    status, _, body = await curl(url)
    assert status == 200, body
    assert body.splitlines()[0] == "ok"
    assert {line.split(":")[0] for line in body.splitlines()[1:]} == {
        "store",
        "writer",
        "crl",
        "listeners",
    }

    imap = next(
        x
        for x in d.daemon.listeners
        if x.name.startswith("imap ") and str(d.ports["imap"]) in x.name
    )
    await imap.stop(0.5)
    status, _, body = await curl(url)
    assert status == 503
    assert body.splitlines()[0] == "fail: listeners"
    assert f"listeners: FAIL: not accepting connections: {imap.name}" in body


async def test_unknown_path_is_404_and_metrics_only_where_configured(web: RunningDaemon) -> None:
    status, _, _ = await curl(f"http://127.0.0.1:{web.ports['http']}/admin")
    assert status == 404
    status, _, _ = await curl("-X", "POST", f"http://127.0.0.1:{web.ports['http']}/metrics")
    assert status == 405
