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
    ("cert", "route_dn", "reason"),
    [
        ("revoked", None, "peer certificate refused: certificate revoked"),
        ("expired", None, "peer certificate refused: certificate has expired"),
        ("rogue", None, "peer certificate refused: unable to get local issuer certificate"),
        # a valid certificate of the PKI, but not the operator the route names
        ("server", None, "peer certificate subject 'CN=localhost,O=OPERATEUR DEMO TEST,C=FR'"),
        # the route's DN wins over the trust space's
        ("peer", "CN=other.localhost,O=OPERATEUR PAIR TEST,C=FR", "is not the expected"),
        (None, None, "does not offer STARTTLS: refusing to send in plain text"),
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
        # nothing reached the peer: not even MAIL FROM
        assert peer.mails == [] and peer.data_seen == []
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
