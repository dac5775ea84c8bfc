"""The SMTP idle timeout (RFC 5321 §4.5.3.2.7, `smtp_command_timeout_seconds`): a
client that stops sending is disconnected once the timeout has passed since its last
command, and one that keeps sending commands is not, however long its session. The
timer moves a deadline at each command instead of being made again (RelaySMTP's
`_reset_timeout`); these check what a client sees."""

from __future__ import annotations

import asyncio
import time

from tests.harness import RunningDaemon, daemon_fixture
from tests.smtp import wire

IDLE = 2


idle_daemon = daemon_fixture(limits=f"smtp_command_timeout_seconds = {IDLE}\n")


async def test_a_silent_client_is_disconnected_after_the_timeout(
    idle_daemon: RunningDaemon,
) -> None:
    reader, writer = await wire.connect(idle_daemon.ports["inbound"])
    started = time.monotonic()
    assert await wire.is_closed(reader, timeout=IDLE + 10)
    waited = time.monotonic() - started
    assert IDLE - 0.5 <= waited < IDLE + 5, waited
    await wire.close(writer)


async def test_each_command_moves_the_deadline(idle_daemon: RunningDaemon) -> None:
    """NOOP every 0.7 s for three times the timeout: still connected; then silent, the
    connection ends about one timeout after the last command."""
    reader, writer = await wire.connect(idle_daemon.ports["inbound"])
    started = time.monotonic()
    while time.monotonic() - started < 3 * IDLE:
        writer.write(b"NOOP\r\n")
        assert (await wire.read_reply(reader))[0] == 250
        await asyncio.sleep(0.7)
    last = time.monotonic()
    writer.write(b"NOOP\r\n")
    assert (await wire.read_reply(reader))[0] == 250
    assert await wire.is_closed(reader, timeout=IDLE + 10)
    waited = time.monotonic() - last
    assert IDLE - 0.5 <= waited < IDLE + 5, waited
    await wire.close(writer)
