"""A second STARTTLS inside TLS (issue 9, item 4) was answered 220 and started a
TLS-in-TLS handshake. RFC 3207 §4.2: once TLS is up STARTTLS is not offered; asking
again is a bad sequence of commands, 503 5.5.1, and the session goes on in TLS."""

from __future__ import annotations

import asyncio
import smtplib
import ssl

import pytest

from tests.harness import PASSWORDS, RunningDaemon
from tests.smtp import wire

ALREADY = (503, b"5.5.1 TLS is already active (RFC 3207 section 4.2)")


@pytest.mark.parametrize("listener", ["submission", "inbound"])
async def test_second_starttls_is_503(daemon: RunningDaemon, listener: str) -> None:
    cert = "peer" if listener == "inbound" else None

    def run() -> tuple[bool, tuple[int, bytes], tuple[int, bytes], str | None]:
        with smtplib.SMTP("127.0.0.1", daemon.ports[listener], timeout=30) as s:
            s.ehlo("client.example")
            s.starttls(context=daemon.client_context(cert=cert))
            s.ehlo("client.example")
            offered = s.has_extn("starttls")
            again = s.docmd("STARTTLS")
            after = s.noop()
            assert isinstance(s.sock, ssl.SSLSocket)
            return offered, again, after, s.sock.version()

    offered, again, after, version = await asyncio.to_thread(run)
    assert not offered  # EHLO inside TLS does not offer it
    assert again == ALREADY
    assert after[0] == 250 and version is not None  # still in the same TLS session


async def test_starttls_on_implicit_tls_is_503(daemon: RunningDaemon) -> None:
    reader, writer = await wire.connect(daemon.ports["submission-tls"], tls=daemon.client_context())
    writer.write(b"EHLO client.example\r\nSTARTTLS\r\n")
    ehlo, again = await wire.read_replies(reader, 2)
    assert ehlo[0] == 250 and b"STARTTLS" not in ehlo[1]
    assert again == (ALREADY[0], b"503 " + ALREADY[1] + b"\r\n")
    writer.write(wire.plain_auth("martin", PASSWORDS["martin"]))
    assert (await wire.read_reply(reader))[0] == 235  # the session is still usable
    await wire.close(writer)


async def test_third_starttls_ends_the_session(daemon: RunningDaemon) -> None:
    """The per-session STARTTLS budget (2) is a wall for a client that loops."""
    reader, writer = await wire.connect(daemon.ports["submission"])
    writer.write(b"EHLO client.example\r\n")
    await wire.read_reply(reader)
    await wire.starttls(reader, writer, daemon.client_context())
    writer.write(b"STARTTLS\r\n")
    assert (await wire.read_reply(reader))[0] == 503
    writer.write(b"STARTTLS\r\n")
    code, text = await wire.read_reply(reader)
    assert (code, text) == (421, b"421 4.7.0 STARTTLS sent too many times\r\n")
    assert await wire.is_closed(reader)
    await wire.close(writer)
