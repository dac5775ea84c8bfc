"""Inbound relay from other MSSanté operators: STARTTLS, a trusted client certificate,
the trust-space whitelist. Each refusal has its exact reply and an audit event."""

from __future__ import annotations

import asyncio
import json
import smtplib
import ssl

import pytest

from relay.store.store import AuditFilter
from tests.harness import PEER_DOMAIN, SHARED, RunningDaemon

FROM_PEER = f"dr.x@{PEER_DOMAIN}"
MESSAGE = (
    f"From: Dr X <{FROM_PEER}>\r\n"
    f"To: <{SHARED}>\r\n"
    "Subject: Lettre de liaison\r\n"
    "Message-ID: <liaison-1@peer.mssante.fr>\r\n"
    "X-MSS-CODECDA: 34133-9\r\n"
    "\r\n"
    "Lettre.\r\n"
).encode()


def relay_as(
    d: RunningDaemon, cert: str | None, mail_from: str, rcpt: str, *, starttls: bool = True
) -> list[tuple[int, bytes]]:
    """A peer operator's session: EHLO, STARTTLS with `cert`, MAIL, RCPT, DATA."""
    out: list[tuple[int, bytes]] = []
    with smtplib.SMTP("127.0.0.1", d.ports["inbound"], timeout=10) as s:
        s.ehlo("mx.peer.mssante.fr")
        if starttls:
            s.starttls(context=d.client_context(cert=cert))
            s.ehlo("mx.peer.mssante.fr")
            assert "auth" not in s.esmtp_features
        out.append(s.docmd("MAIL", f"FROM:<{mail_from}>"))
        if out[-1][0] != 250:
            return out
        out.append(s.docmd("RCPT", f"TO:<{rcpt}>"))
        if out[-1][0] != 250:
            return out
        out.append(s.data(MESSAGE))
    return out


async def refusals(d: RunningDaemon) -> list[dict[str, object]]:
    rows = await d.store.audit_rows(AuditFilter(action="message.refused"))
    return [{"peer": r.peer, **json.loads(r.data)["details"]} for r in rows]


async def test_trusted_peer_delivers(daemon: RunningDaemon) -> None:
    await daemon.trust_peer()
    replies = await asyncio.to_thread(relay_as, daemon, "peer", FROM_PEER, SHARED)
    assert [c for c, _ in replies] == [250, 250, 250]
    [stored] = await daemon.store.messages(SHARED)
    assert b"X-MSS-CODECDA: 34133-9\r\n" in stored.raw
    assert b"with ESMTPS" in stored.raw
    [event] = await daemon.store.audit_rows(AuditFilter(action="message.accepted"))
    details = json.loads(event.data)["details"]
    assert details["certificate_subject"] == daemon.pki.subjects["peer"]
    assert details["size_bytes"] == len(stored.raw) > len(MESSAGE)
    assert event.person is None and event.peer == "127.0.0.1"


@pytest.mark.parametrize(
    ("cert", "reason"),
    [
        ("rogue", "unable to get local issuer certificate"),
        ("expired", "certificate has expired"),
        ("revoked", "certificate revoked"),
        (None, "peer did not return a certificate"),
    ],
)
async def test_untrusted_certificates_fail_the_handshake(
    daemon: RunningDaemon, cert: str | None, reason: str
) -> None:
    await daemon.trust_peer()
    with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
        await asyncio.to_thread(relay_as, daemon, cert, FROM_PEER, SHARED)
    assert await daemon.store.messages(SHARED) == []
    for _ in range(50):  # the server records the refusal as the handshake fails
        events = await refusals(daemon)
        if events:
            break
        await asyncio.sleep(0.05)
    [event] = events
    assert event["stage"] == "tls" and event["peer"] == "127.0.0.1"
    assert reason in str(event["reason"])


async def test_mail_before_starttls_refused(daemon: RunningDaemon) -> None:
    replies = await asyncio.to_thread(relay_as, daemon, None, FROM_PEER, SHARED, starttls=False)
    assert replies == [(530, b"5.7.0 Must issue a STARTTLS command first")]


async def test_dn_not_matching_whitelist_refused(daemon: RunningDaemon) -> None:
    await daemon.trust_peer(dn="CN=other.operator,O=AUTRE OPERATEUR,C=FR")
    replies = await asyncio.to_thread(relay_as, daemon, "peer", FROM_PEER, SHARED)
    assert replies == [
        (
            550,
            f"5.7.1 Certificate subject does not match the trust space entry for "
            f"{PEER_DOMAIN}".encode(),
        )
    ]
    [event] = await refusals(daemon)
    assert event["rule"] == "trust.dn-mismatch"
    assert event["certificate_subject"] == daemon.pki.subjects["peer"]


async def test_domain_not_in_trust_space_refused(daemon: RunningDaemon) -> None:
    await daemon.trust_peer()
    replies = await asyncio.to_thread(relay_as, daemon, "peer", "x@not-listed.example", SHARED)
    assert replies == [
        (550, b"5.7.1 Sender domain not-listed.example is not in the MSSante trust space")
    ]
    [event] = await refusals(daemon)
    assert event["rule"] == "trust.domain-not-listed" and event["sender"] == "x@not-listed.example"


async def test_unknown_box_refused(daemon: RunningDaemon) -> None:
    await daemon.trust_peer()
    replies = await asyncio.to_thread(
        relay_as, daemon, "peer", FROM_PEER, "inconnu@cpts-demo.mssante.fr"
    )
    assert replies[-1] == (550, b"5.1.1 inconnu@cpts-demo.mssante.fr: no such mailbox here")
    [event] = await refusals(daemon)
    assert event["rule"] == "recipient.unknown-box"


async def test_relay_attempt_refused(daemon: RunningDaemon) -> None:
    await daemon.trust_peer()
    replies = await asyncio.to_thread(
        relay_as, daemon, "peer", FROM_PEER, "someone@chu-ailleurs.mssante.fr"
    )
    assert replies[-1] == (
        550,
        b"5.7.1 Relaying denied: someone@chu-ailleurs.mssante.fr is not a mailbox of this server",
    )
    [event] = await refusals(daemon)
    assert event["rule"] == "recipient.relay-denied"
    assert event["certificate_subject"] == daemon.pki.subjects["peer"]


async def test_null_sender_needs_a_listed_certificate(daemon: RunningDaemon) -> None:
    await daemon.trust_peer(dn="CN=other.operator,O=AUTRE OPERATEUR,C=FR")
    replies = await asyncio.to_thread(relay_as, daemon, "peer", "", SHARED)
    assert replies[0][0] == 550 and b"is not listed in the MSSante trust space" in replies[0][1]
    await daemon.trust_peer()
    replies = await asyncio.to_thread(relay_as, daemon, "peer", "", SHARED)
    assert [c for c, _ in replies] == [250, 250, 250]
