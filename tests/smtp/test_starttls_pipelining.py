"""Commands pipelined after STARTTLS (issue 9, item 4; the CVE-2011-0411 family).

RFC 3207 §4.2: what the client sent in clear must not be acted on after the
handshake. It was discarded, but the server then waited for a handshake the client
never started (it waits for the replies to its commands): 60 to 300 s per
connection. Now the session is refused at once, nothing runs, and it is audited."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from relay.store.store import AuditFilter
from tests.harness import MARTIN_BOX, PEER_DOMAIN, SHARED, RunningDaemon
from tests.smtp import wire

REFUSED = (
    b"554 5.5.1 Commands sent after STARTTLS before the TLS handshake are refused"
    b" (RFC 3207 section 4.2): closing\r\n"
)
# Far below the 60 s handshake timeout it waited for before; generous for a loaded
# machine. The server answers in milliseconds.
FAIL_FAST_SECONDS = 15.0


@pytest.mark.parametrize(
    ("listener", "sender"),
    [("submission", MARTIN_BOX), ("inbound", f"dr.x@{PEER_DOMAIN}")],
)
async def test_pipelined_after_starttls_refused_at_once(
    daemon: RunningDaemon, listener: str, sender: str
) -> None:
    reader, writer = await wire.connect(daemon.ports[listener])
    started = time.monotonic()
    writer.write(
        b"EHLO client.example\r\nSTARTTLS\r\n"
        + f"MAIL FROM:<{sender}>\r\nRCPT TO:<{SHARED}>\r\nDATA\r\n".encode()
        + b"Subject: injected\r\n\r\nx\r\n.\r\n"
    )
    ehlo, refused = await wire.read_replies(reader, 2)
    assert ehlo[0] == 250
    assert refused == (554, REFUSED)
    assert await wire.is_closed(reader, timeout=FAIL_FAST_SECONDS)
    assert time.monotonic() - started < FAIL_FAST_SECONDS
    await wire.close(writer)
    assert await daemon.store.messages(SHARED) == []
    [event] = await daemon.store.audit_rows(AuditFilter(action="message.refused"))
    details = json.loads(event.data)["details"]
    assert details["rule"] == "starttls.pipelined" and details["stage"] == "starttls"


async def test_partial_line_after_starttls_refused(daemon: RunningDaemon) -> None:
    reader, writer = await wire.connect(daemon.ports["submission"])
    writer.write(b"EHLO client.example\r\nSTARTTLS\r\nMAIL FR")
    _, refused = await wire.read_replies(reader, 2)
    assert refused == (554, REFUSED)
    assert await wire.is_closed(reader, timeout=FAIL_FAST_SECONDS)
    await wire.close(writer)


async def test_clear_text_after_the_220_fails_the_handshake_at_once(
    daemon: RunningDaemon,
) -> None:
    """Sent after the 220 (not pipelined), clear text reaches the TLS layer: the
    handshake fails on it at once, nothing runs."""
    reader, writer = await wire.connect(daemon.ports["submission"])
    writer.write(b"EHLO client.example\r\nSTARTTLS\r\n")
    assert [c for c, _ in await wire.read_replies(reader, 2)] == [250, 220]
    started = time.monotonic()
    writer.write(f"MAIL FROM:<{MARTIN_BOX}>\r\nRCPT TO:<{SHARED}>\r\n".encode())
    assert await wire.is_closed(reader, timeout=FAIL_FAST_SECONDS)
    assert time.monotonic() - started < FAIL_FAST_SECONDS
    await wire.close(writer)
    assert await daemon.store.messages(SHARED) == []


async def test_starttls_alone_then_handshake_still_works(daemon: RunningDaemon) -> None:
    reader, writer = await wire.connect(daemon.ports["submission"])
    writer.write(b"EHLO client.example\r\n")
    await wire.read_reply(reader)
    await wire.starttls(reader, writer, daemon.client_context())
    writer.write(b"EHLO client.example\r\n")
    code, text = await wire.read_reply(reader)
    assert code == 250 and b"AUTH" in text
    await wire.close(writer)


async def test_a_refusal_costs_no_time_for_the_next_client(daemon: RunningDaemon) -> None:
    """Many pipelining clients at once do not hold connections open."""

    async def one() -> bool:
        reader, writer = await wire.connect(daemon.ports["submission"])
        writer.write(b"EHLO a\r\nSTARTTLS\r\nNOOP\r\n")
        closed = await wire.is_closed(reader, timeout=FAIL_FAST_SECONDS)
        await wire.close(writer)
        return closed

    assert all(await asyncio.gather(*(one() for _ in range(20))))
