"""The queue worker against scripted peers over real mutual TLS: retries with injected
time, bounces with a DSN, delay warnings, expiry, and connection reuse."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from relay.audit.events import AuditEvent, MessageAccepted
from relay.config.model import StorageConfig
from relay.store.store import Acceptance, AuditFilter
from relay.tls.pki import DevPki
from tests.delivery.conftest import (
    DR_X,
    DR_Y,
    DR_Z,
    FakePeer,
    delivery_status_blocks,
    letter,
    parse_message,
    queue_rows,
    route,
    submit,
    use_clock,
    wait_queue_empty,
    wait_status,
    wait_until,
)
from tests.harness import MARTIN_BOX, PEER_DOMAIN, RunningDaemon, start_daemon

Peers = Callable[..., Awaitable[FakePeer]]


async def relay_to(
    tmp_path: Path, pki: DevPki, storage: StorageConfig, peer: FakePeer, limits: str = ""
) -> RunningDaemon:
    d = await start_daemon(
        tmp_path, pki, storage, limits=limits, extra=route(PEER_DOMAIN, peer.port)
    )
    await d.trust_peer()
    return d


async def details(d: RunningDaemon, action: str) -> list[dict[str, object]]:
    rows = await d.store.audit_rows(AuditFilter(action=action))
    return [
        {"peer": r.peer, "answer": json.loads(r.data)["answer"], **json.loads(r.data)["details"]}
        for r in rows
    ]


async def test_delivers_over_mutual_tls_and_removes_the_message(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig, peers: Peers
) -> None:
    peer = await peers("peer")
    d = await relay_to(tmp_path, dev_pki, storage, peer)
    try:
        code, reply = await submit(d, [DR_X], letter(MARTIN_BOX, DR_X))
        assert code == 250, reply
        await wait_queue_empty(d)
        [got] = peer.accepted
        assert got.mail_from == MARTIN_BOX and got.rcpt_tos == [DR_X]
        assert b"X-MSS-CODECDA: 11488-4\r\n" in got.content
        assert got.content.startswith(b"Received: from cabinet.example")
        # our daemon presented its own certificate to the peer
        assert got.client_subject is not None and "OPERATEUR DEMO TEST" in got.client_subject
        [event] = await details(d, "delivery.delivered")
        assert event["recipient"] == DR_X and event["attempts"] == 1
        assert event["certificate_subject"] == dev_pki.subjects["peer"]
        assert event["peer"] == f"localhost:{peer.port}"
        assert str(event["answer"]).startswith("250")
        # the body is gone: no box holds it and no queue row needs it
        assert await d.store.sql_scalar("SELECT count(*) FROM blobs") == 0
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)


async def test_451_then_250_with_injected_time(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig, peers: Peers
) -> None:
    peer = await peers("peer", data_replies=["451 4.7.1 Greylisted, come back later"])
    d = await relay_to(tmp_path, dev_pki, storage, peer)
    clock = use_clock(d)
    assert d.daemon.worker is not None
    try:
        code, _ = await submit(d, [DR_X])
        assert code == 250
        [row] = await wait_status(d, "deferred")
        assert row.attempts == 1
        assert row.last_reply == "451 4.7.1 Greylisted, come back later"
        wait = (
            (row.next_attempt_at - row.last_attempt_at).total_seconds()
            if row.last_attempt_at
            else 0
        )
        assert 299 <= wait <= 301  # retry_first_seconds = 300
        [deferred] = await details(d, "delivery.deferred")
        assert deferred["reason"] == "451 4.7.1 Greylisted, come back later"
        # not due yet: a round does nothing, nothing more reaches the peer
        assert await d.daemon.worker.run_once() == 0
        assert [r.status for r in await queue_rows(d)] == ["deferred"]
        assert len(peer.data_seen) == 1 and peer.accepted == []
        clock.advance(301)
        await wait_queue_empty(d)
        [got] = peer.accepted
        assert got.rcpt_tos == [DR_X]
        [delivered] = await details(d, "delivery.delivered")
        assert delivered["attempts"] == 2
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)


async def test_550_bounces_with_one_dsn_in_the_senders_inbox(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig, peers: Peers
) -> None:
    peer = await peers(
        "peer",
        rcpt_replies={
            DR_X: "550 5.1.1 <dr.x@peer.mssante.fr>: no such user",
            DR_Y: "553 5.1.3 mailbox name not allowed",
        },
    )
    d = await relay_to(tmp_path, dev_pki, storage, peer)
    try:
        code, _ = await submit(d, [DR_X, DR_Y, DR_Z], letter(MARTIN_BOX, DR_X, mid="cr-550"))
        assert code == 250
        await wait_queue_empty(d)
        [got] = peer.accepted  # one transaction: only dr.z was accepted
        assert got.rcpt_tos == [DR_Z]
        [dsn] = await d.store.messages(MARTIN_BOX)  # ONE report for the two failures
        report = parse_message(dsn.raw)
        assert report["To"].addresses[0].addr_spec == MARTIN_BOX
        assert report["In-Reply-To"] == "<cr-550@cabinet.example>"
        blocks = delivery_status_blocks(dsn.raw)
        assert [(b["final-recipient"], b["action"], b["status"]) for b in blocks] == [
            (f"rfc822; {DR_X}", "failed", "5.1.1"),
            (f"rfc822; {DR_Y}", "failed", "5.1.3"),
        ]
        assert "550 5.1.1" in blocks[0]["diagnostic-code"]
        # the original's headers are in the report, its body is not
        assert b"X-MSS-CODECDA: 11488-4" in dsn.raw
        assert b"Compte rendu de consultation" not in dsn.raw
        bounced = await details(d, "delivery.bounced")
        assert sorted(str(b["recipient"]) for b in bounced) == [DR_X, DR_Y]
        [report_event] = await details(d, "delivery.dsn")
        assert report_event["kind"] == "failure" and report_event["local"] is True
        assert report_event["recipients"] == [DR_X, DR_Y]
        # only the DSN's body is left
        assert await d.store.sql_scalar("SELECT count(*) FROM blobs") == 1
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)


async def test_no_dsn_for_a_null_sender_and_a_queued_dsn_for_a_remote_one(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig, peers: Peers
) -> None:
    peer = await peers("peer", rcpt_replies={DR_X: "550 5.1.1 no such user"})
    d = await relay_to(tmp_path, dev_pki, storage, peer)
    try:
        # A report we relay for someone (null reverse-path) and a message from a remote
        # sender; both bounce at the peer.
        for sender, mid in (("", "null"), (f"dr.w@{PEER_DOMAIN}", "remote")):
            await d.store.accept(
                Acceptance(
                    raw=letter(sender or "postmaster@x.example", DR_X, mid=mid),
                    meta={},
                    sender=sender,
                    local_recipients=(),
                    remote_recipients=(DR_X,),
                    message_id=f"{mid}@cabinet.example",
                    audit=_accepted,
                )
            )
        await wait_queue_empty(d)
        # the only thing the peer accepted: the DSN to the remote sender, MAIL FROM:<>
        [report] = peer.accepted
        assert report.mail_from == "<>" and report.rcpt_tos == [f"dr.w@{PEER_DOMAIN}"]
        assert delivery_status_blocks(report.content)[0]["final-recipient"] == f"rfc822; {DR_X}"
        events = await details(d, "delivery.dsn")
        assert [(e["to"], e["local"]) for e in events] == [(f"dr.w@{PEER_DOMAIN}", False)]
        assert await d.store.messages(MARTIN_BOX) == []
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)


def _accepted(queue_id: str) -> AuditEvent:
    return MessageAccepted(
        protocol="test",
        message_id=None,
        sender="",
        recipients=(DR_X,),
        size_bytes=0,
        queue_id=queue_id,
    )


async def test_delay_warning_once_then_expiry_bounce(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig, peers: Peers
) -> None:
    peer = await peers("peer", rcpt_replies={DR_X: "450 4.2.1 mailbox busy"})
    limits = "delay_warning_seconds = 600\nretry_give_up_seconds = 1800\n"
    d = await relay_to(tmp_path, dev_pki, storage, peer, limits=limits)
    clock = use_clock(d)
    try:
        assert (await submit(d, [DR_X]))[0] == 250
        await wait_status(d, "deferred")  # attempt 1 at t=0, next at +300
        clock.advance(301)
        await wait_until(lambda: _attempts(d, 2), what="attempt 2")
        assert await d.store.messages(MARTIN_BOX) == []  # waited 301 s < 600 s
        clock.advance(601)  # attempt 3 at +902: past the warning time
        await wait_until(lambda: _attempts(d, 3), what="attempt 3")
        await wait_until(lambda: _inbox_size(d, 1), what="the delay warning")
        [warning] = await d.store.messages(MARTIN_BOX)
        [block] = delivery_status_blocks(warning.raw)
        assert (block["action"], block["status"]) == ("delayed", "4.2.1")
        assert "will-retry-until" in block
        clock.advance(1200)  # attempt 4 at +2102: past the 1800 s lifetime
        await wait_queue_empty(d)
        inbox = await d.store.messages(MARTIN_BOX)
        assert len(inbox) == 2  # one warning, one failure report: no second warning
        [block] = delivery_status_blocks(inbox[1].raw)
        assert (block["action"], block["status"]) == ("failed", "4.4.7")
        [bounced] = await details(d, "delivery.bounced")
        assert str(bounced["reason"]).startswith("4.4.7 delivery time expired after 4 attempts")
        kinds = [e["kind"] for e in await details(d, "delivery.dsn")]
        assert kinds == ["delay", "failure"]
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)


async def _attempts(d: RunningDaemon, n: int) -> bool:
    assert d.daemon.worker is not None
    d.daemon.worker.wake()
    rows = await queue_rows(d)
    return bool(rows) and rows[0].attempts == n and rows[0].status == "deferred"


async def _inbox_size(d: RunningDaemon, n: int) -> bool:
    return len(await d.store.messages(MARTIN_BOX)) == n


async def test_one_connection_carries_several_messages(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig, peers: Peers
) -> None:
    peer = await peers("peer")
    d = await relay_to(tmp_path, dev_pki, storage, peer, limits="delivery_concurrency = 1\n")
    assert d.daemon.worker is not None
    try:
        # queue five messages while the worker cannot run (the store holds them)
        for n in range(5):
            await d.store.accept(
                Acceptance(
                    raw=letter(MARTIN_BOX, DR_X, mid=f"reuse-{n}"),
                    meta={},
                    sender=MARTIN_BOX,
                    local_recipients=(),
                    remote_recipients=(DR_X,),
                    message_id=f"reuse-{n}@cabinet.example",
                    audit=_accepted,
                )
            )
        before = d.daemon.worker.connections_opened
        await wait_queue_empty(d)
        assert len(peer.accepted) == 5
        # at most one connection per round, and never one per message
        assert d.daemon.worker.connections_opened - before < 5
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)


async def test_size_and_8bit_are_declared_and_respected(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig, peers: Peers
) -> None:
    """RFC 1870: a message over the peer's SIZE is not sent (permanent failure, DSN);
    RFC 6152: 8-bit data goes with BODY=8BITMIME."""
    peer = await peers("peer", size_limit=2000)
    d = await relay_to(tmp_path, dev_pki, storage, peer)
    try:
        small = letter(MARTIN_BOX, DR_X, mid="accents").replace(
            b"(contenu de test)", "(résumé, fièvre)".encode()
        )
        big = letter(MARTIN_BOX, DR_Y, mid="big") + (b"x" * 76 + b"\r\n") * 40
        assert (await submit(d, [DR_X], small))[0] == 250
        assert (await submit(d, [DR_Y], big))[0] == 250
        await wait_queue_empty(d)
        [got] = peer.accepted
        assert got.rcpt_tos == [DR_X] and "résumé".encode() in got.content
        [options] = peer.mail_options  # the big one never reached MAIL FROM
        assert "BODY=8BITMIME" in options and any(o.startswith("SIZE=") for o in options)
        [dsn] = await d.store.messages(MARTIN_BOX)
        [block] = delivery_status_blocks(dsn.raw)
        assert (block["final-recipient"], block["status"]) == (f"rfc822; {DR_Y}", "5.3.4")
        assert "accepts at most 2000" in block["diagnostic-code"]
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)
