"""A disposition notification submitted with a null sender (RFC 8098 §3) leaves with
MAIL FROM:<>, and a failure to deliver it makes no DSN (RFC 5321 §4.5.5)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from relay.config.model import StorageConfig
from relay.store.store import AuditFilter
from relay.tls.pki import DevPki
from tests.delivery.conftest import DR_X, FakePeer, route, submit, wait_queue_empty
from tests.harness import MARTIN_BOX, PEER_DOMAIN, start_daemon
from tests.smtp.test_originator_fields import mdn

Peers = Callable[..., Awaitable[FakePeer]]


async def test_mdn_leaves_with_a_null_reverse_path(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig, peers: Peers
) -> None:
    peer = await peers("peer")
    d = await start_daemon(tmp_path, dev_pki, storage, extra=route(PEER_DOMAIN, peer.port))
    try:
        await d.trust_peer()
        code, _ = await submit(d, [DR_X], mdn(MARTIN_BOX, DR_X), mail_from="")
        assert code == 250
        await wait_queue_empty(d)
        [got] = peer.accepted
        assert peer.mails == ["<>"]  # aiosmtpd's form of MAIL FROM:<>
        assert b"disposition-notification" in got.content
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)


async def test_undeliverable_mdn_bounces_to_nobody(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig, peers: Peers
) -> None:
    peer = await peers("peer", rcpt_replies={DR_X: "550 5.1.1 no such user"})
    d = await start_daemon(tmp_path, dev_pki, storage, extra=route(PEER_DOMAIN, peer.port))
    try:
        await d.trust_peer()
        code, _ = await submit(d, [DR_X], mdn(MARTIN_BOX, DR_X), mail_from="")
        assert code == 250
        await wait_queue_empty(d)
        assert await d.store.audit_rows(AuditFilter(action="delivery.bounced"))
        assert await d.store.audit_rows(AuditFilter(action="delivery.dsn")) == []
        assert await d.store.messages(MARTIN_BOX) == []  # no DSN for a null sender
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)
