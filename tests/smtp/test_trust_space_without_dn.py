"""A trust-space domain listed without `DNCertificatOperateur` must accept no
certificate: before the fix, any certificate the IGC-Sante chain vouches for (any
operator's) could send as that domain. Both engines (the `daemon` fixture)."""

from __future__ import annotations

import asyncio

import pytest

from relay.tls.trust_space import listed_dn_matches
from tests.harness import PEER_DOMAIN, SHARED, RunningDaemon
from tests.smtp.test_inbound import FROM_PEER, refusals, relay_as

NO_DN_REPLY = (
    550,
    f"5.7.1 The MSSante trust space lists no certificate DN for {PEER_DOMAIN}: "
    "its mail is refused until the list names one".encode(),
)


@pytest.mark.parametrize("cert", ["peer", "server"], ids=["peer-cert", "another-operator"])
async def test_domain_listed_without_dn_matches_no_certificate(
    daemon: RunningDaemon, cert: str
) -> None:
    await daemon.trust_peer(listed_dn=False)
    replies = await asyncio.to_thread(relay_as, daemon, cert, FROM_PEER, SHARED)
    assert replies == [NO_DN_REPLY]
    assert await daemon.store.messages(SHARED) == []
    [event] = await refusals(daemon)
    assert event["rule"] == "trust.domain-without-dn"
    assert event["stage"] == "mail" and event["sender"] == FROM_PEER
    assert event["certificate_subject"] == daemon.pki.subjects[cert]


async def test_blank_dn_is_no_dn(daemon: RunningDaemon) -> None:
    await daemon.trust_peer(dn="   ")
    replies = await asyncio.to_thread(relay_as, daemon, "peer", FROM_PEER, SHARED)
    assert replies == [NO_DN_REPLY]


async def test_domain_accepted_once_its_dn_is_listed(daemon: RunningDaemon) -> None:
    await daemon.trust_peer(listed_dn=False)
    assert (await asyncio.to_thread(relay_as, daemon, "peer", FROM_PEER, SHARED))[0][0] == 550
    await daemon.trust_peer()  # a new import names the operator's DN
    replies = await asyncio.to_thread(relay_as, daemon, "peer", FROM_PEER, SHARED)
    assert [c for c, _ in replies] == [250, 250, 250]


async def test_null_sender_not_vouched_for_by_a_dn_less_entry(daemon: RunningDaemon) -> None:
    await daemon.trust_peer(listed_dn=False)
    replies = await asyncio.to_thread(relay_as, daemon, "peer", "", SHARED)
    assert replies[0][0] == 550
    [event] = await refusals(daemon)
    assert event["rule"] == "trust.null-sender-unknown-certificate"


@pytest.mark.parametrize("listed", [None, "", "  \t"])
def test_listed_dn_matches_fails_closed(listed: str | None) -> None:
    assert not listed_dn_matches(listed, "CN=peer.localhost,O=X,C=FR")
    assert not listed_dn_matches(listed, "")
