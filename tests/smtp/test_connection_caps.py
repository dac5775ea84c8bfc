"""Connection caps and the login timeout on SMTP (issue 9, item 5): no listener capped
connections (500 of 500 accepted), and a submission client that never authenticated
was held as long as it sent a command now and then."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.config.model import StorageConfig
from relay.tls.pki import DevPki
from tests.harness import RunningDaemon, daemon_running
from tests.smtp import wire

PER_IP = 3
PER_LISTENER = 5
LOGIN_TIMEOUT = 3


@pytest.fixture
async def capped(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> AsyncIterator[RunningDaemon]:
    limits = (
        f"max_connections_per_ip = {PER_IP}\n"
        f"max_connections_per_listener = {PER_LISTENER}\n"
        f"smtp_login_timeout_seconds = {LOGIN_TIMEOUT}\n"
    )
    async with daemon_running(tmp_path, dev_pki, storage, limits=limits) as running:
        yield running


async def open_from(
    port: int, source: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, tuple[int, bytes]]:
    """A connection from `source` (any 127.0.0.0/8 address is this machine)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    return reader, writer, await wire.read_reply(reader)


async def test_caps_per_address_and_per_listener(capped: RunningDaemon) -> None:
    port = capped.ports["submission"]
    held = []
    for _ in range(PER_IP):
        r, w, greeting = await open_from(port, "127.0.0.1")
        assert greeting[0] == 220
        held.append((r, w))
    r, w, refused = await open_from(port, "127.0.0.1")
    assert refused == (
        421,
        b"421 4.7.0 Too many connections from 127.0.0.1 (3 at most): try again later\r\n",
    )
    assert await wire.is_closed(r)
    await wire.close(w)
    # another address still gets in, up to the listener's cap
    for _ in range(PER_LISTENER - PER_IP):
        r, w, greeting = await open_from(port, "127.0.0.2")
        assert greeting[0] == 220
        held.append((r, w))
    r, w, refused = await open_from(port, "127.0.0.3")
    assert refused == (
        421,
        b"421 4.7.0 Too many connections to this service (5 at most): try again later\r\n",
    )
    assert await wire.is_closed(r)
    await wire.close(w)
    # another listener has its own count
    r, w, greeting = await open_from(capped.ports["inbound"], "127.0.0.1")
    assert greeting[0] == 220
    await wire.close(w)
    # a slot freed is a slot taken again
    r0, w0 = held.pop(0)
    w0.write(b"QUIT\r\n")
    assert (await wire.read_reply(r0))[0] == 221
    await wire.close(w0)
    for _ in range(200):  # the server sees the close a moment later
        r, w, greeting = await open_from(port, "127.0.0.1")
        if greeting[0] == 220:
            break
        await wire.close(w)
        await asyncio.sleep(0.05)
    assert greeting[0] == 220
    held.append((r, w))
    for _, w in held:
        await wire.close(w)


async def test_login_timeout_ends_a_session_that_never_authenticates(
    capped: RunningDaemon,
) -> None:
    """NOOP every half second resets the idle timer, not the login timeout."""
    reader, writer = await wire.connect(capped.ports["submission"])
    started = time.monotonic()
    got: list[bytes] = []
    while time.monotonic() - started < LOGIN_TIMEOUT + 30:
        writer.write(b"NOOP\r\n")
        try:
            code, text = await wire.read_reply(reader, timeout=5)
        except (wire.Closed, ConnectionError):
            break
        got.append(text)
        if code == 421:
            break
        await asyncio.sleep(0.5)
    assert (
        got[-1]
        == (
            f"421 4.7.0 No authentication within {LOGIN_TIMEOUT} s of connecting: closing\r\n"
        ).encode()
    )
    assert await wire.is_closed(reader)
    assert time.monotonic() - started >= LOGIN_TIMEOUT
    await wire.close(writer)


async def test_an_authenticated_session_outlives_the_login_timeout(
    capped: RunningDaemon,
) -> None:
    ctx = capped.client_context(cert="person-martin")
    reader, writer = await wire.connect(capped.ports["submission-tls"], tls=ctx)
    writer.write(b"EHLO client.example\r\nAUTH EXTERNAL =\r\n")
    _, auth = await wire.read_replies(reader, 2)
    assert auth[0] == 235, auth
    await asyncio.sleep(LOGIN_TIMEOUT + 1)
    writer.write(b"NOOP\r\n")
    assert (await wire.read_reply(reader))[0] == 250
    await wire.close(writer)


async def test_inbound_has_no_login_timeout(capped: RunningDaemon) -> None:
    """Peers relaying mail do not authenticate with AUTH: their certificate is checked."""
    reader, writer = await wire.connect(capped.ports["inbound"])
    await asyncio.sleep(LOGIN_TIMEOUT + 1)
    writer.write(b"NOOP\r\n")
    assert (await wire.read_reply(reader))[0] == 250
    await wire.close(writer)
