"""A peer we cannot verify gets nothing: revoked, expired, wrong DN, no STARTTLS (the
aiosmtplib plaintext fallback, refused). The recipient is deferred with the reason, in
the queue row and in the audit trail."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from relay.audit.events import TrustSpaceImported
from relay.config.model import StorageConfig
from relay.delivery.client import Reply, session_refused_status
from relay.store.store import AuditFilter, TrustEntry
from relay.tls.pki import DevPki
from tests.delivery.conftest import (
    DR_X,
    FakePeer,
    queue_rows,
    route,
    submit,
    wait_queue_empty,
    wait_status,
)
from tests.harness import PEER_DOMAIN, start_daemon

Peers = Callable[..., Awaitable[FakePeer]]


@pytest.mark.parametrize(
    ("cert", "route_dn", "reason", "quit_sent"),
    [
        # the handshake fails: no SMTP session is left to QUIT
        ("revoked", None, "peer certificate refused: certificate revoked", False),
        ("expired", None, "peer certificate refused: certificate has expired", False),
        ("rogue", None, "peer certificate refused: unable to get local issuer certificate", False),
        # a valid certificate of the PKI, but not the operator the route names
        (
            "server",
            None,
            "peer certificate subject 'CN=localhost,O=OPERATEUR DEMO TEST,C=FR'",
            True,
        ),
        # the route's DN wins over the trust space's
        ("peer", "CN=other.localhost,O=OPERATEUR PAIR TEST,C=FR", "is not the expected", True),
        (None, None, "does not offer STARTTLS: refusing to send in plain text", True),
    ],
    ids=["revoked", "expired", "rogue-ca", "wrong-dn", "route-dn", "no-starttls"],
)
async def test_unverifiable_peer_gets_nothing_and_the_recipient_is_deferred(
    tmp_path: Path,
    dev_pki: DevPki,
    storage: StorageConfig,
    peers: Peers,
    cert: str | None,
    route_dn: str | None,
    reason: str,
    quit_sent: bool,
) -> None:
    peer = await peers(cert)
    extra = route(PEER_DOMAIN, peer.port, peer_dn=route_dn)
    d = await start_daemon(tmp_path, dev_pki, storage, extra=extra)
    try:
        await d.trust_peer()  # the whitelist lists the "peer" certificate's DN
        code, _ = await submit(d, [DR_X])
        assert code == 250
        [row] = await wait_status(d, "deferred")
        assert reason in (row.last_reply or ""), row.last_reply
        assert row.attempts == 1
        # nothing reached the peer: not even MAIL FROM; the session ended with QUIT
        # (RFC 5321 §4.1.1.10) wherever there was one
        assert peer.mails == [] and peer.data_seen == []
        assert peer.quits == (1 if quit_sent else 0)
        [event] = await d.store.audit_rows(AuditFilter(action="delivery.deferred"))
        data = json.loads(event.data)
        assert reason in data["details"]["reason"]
        assert data["details"]["recipient"] == DR_X
        assert event.box == "martin@cpts-demo.mssante.fr" and event.person == "martin"
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)


async def test_peer_refusing_our_certificate_defers(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig, peers: Peers
) -> None:
    """Mutual TLS: a peer that does not trust our certificate (it trusts only another
    CA) ends the handshake; nothing is sent, the recipient waits."""
    peer = await peers("peer", client_ca=dev_pki.rogue_ca)
    d = await start_daemon(tmp_path, dev_pki, storage, extra=route(PEER_DOMAIN, peer.port))
    try:
        await d.trust_peer()
        assert (await submit(d, [DR_X]))[0] == 250
        [row] = await wait_status(d, "deferred")
        # TLS 1.3: the client learns of the refusal at its first read after the handshake
        assert (row.last_reply or "").startswith("4.7.5 "), row.last_reply
        assert "may not accept our certificate" in (row.last_reply or "")
        assert peer.mails == []
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        ("421 4.7.1 localhost Error: client certificate not trusted", "4.7.1 "),
        ("554 5.7.0 Client certificate required", "4.7.0 "),
        ("421 Untrusted client certificate", "4.7.5 "),
    ],
)
async def test_peer_refusing_our_certificate_after_the_handshake_is_a_7_x_deferral(
    tmp_path: Path,
    dev_pki: DevPki,
    storage: StorageConfig,
    peers: Peers,
    reply: str,
    status: str,
) -> None:
    """The handshake completes (the peer asked for a certificate without requiring
    one), then the peer refuses the session because of ours: a security refusal,
    deferred as 4.7.x, not as a dropped connection (4.4.2)."""
    peer = await peers("peer", ehlo_in_tls_reply=reply)
    d = await start_daemon(tmp_path, dev_pki, storage, extra=route(PEER_DOMAIN, peer.port))
    try:
        await d.trust_peer()
        assert (await submit(d, [DR_X]))[0] == 250
        [row] = await wait_status(d, "deferred")
        assert (row.last_reply or "").startswith(status), row.last_reply
        assert reply[4:] in (row.last_reply or "")
        assert peer.mails == []
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)


async def test_no_dn_anywhere_means_the_host_name_is_checked(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig, peers: Peers
) -> None:
    peer = await peers("peer")
    d = await start_daemon(tmp_path, dev_pki, storage, extra=route(PEER_DOMAIN, peer.port))
    try:
        await d.store.trust_space_replace(
            [TrustEntry(PEER_DOMAIN, PEER_DOMAIN, None, "no DN listed", None)],
            TrustSpaceImported(source="test", domains=1, generated=None),
        )
        assert (await submit(d, [DR_X]))[0] == 250
        await wait_queue_empty(d)  # "localhost" is in the peer certificate's names
        assert len(peer.accepted) == 1
        assert await queue_rows(d) == []
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)


@pytest.mark.parametrize(
    ("code", "text", "tls_up", "status"),
    [
        (421, "4.7.1 client certificate not trusted", True, "4.7.1"),
        (554, "5.7.0 TLS required", False, "4.7.0"),
        (454, "4.7.0 TLS not available due to temporary reason", False, "4.7.0"),
        (421, "Untrusted client certificate", True, "4.7.5"),
        (421, "certificat client refuse", True, "4.7.5"),
        (421, "4.3.2 shutting down", True, "4.4.2"),
        (421, "too busy", True, "4.4.2"),
        (554, "no certificate talk before TLS", False, "4.4.2"),
    ],
)
def test_session_refused_status(code: int, text: str, tls_up: bool, status: str) -> None:
    assert session_refused_status(Reply(code, text), tls_up=tls_up) == status
