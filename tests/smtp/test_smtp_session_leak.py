"""The SMTP session leak (issue 9, item 1): the listener kept every connection's
protocol object until stop(), +12 kB per EHLO/QUIT session and far more per session
that pipelined data, for the life of the daemon.

2,000 sessions of four shapes (plain EHLO/QUIT; a burst of pipelined commands and
data before STARTTLS; accepted pipelined transactions over implicit TLS; accepted
pipelined transactions after STARTTLS on the inbound relay), then: no listener holds
a session, no session object is alive, even without a garbage collection (the
reference cycles aiosmtpd builds are broken when a connection ends), and the memory
Python still holds for the run (tracemalloc, after gc) is a few hundred bytes per
session at most (bounded caches), against kilobytes per session before."""

from __future__ import annotations

import asyncio
import gc
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable

import pytest

from relay.smtp.listener import SmtpListener
from relay.smtp.session import RelaySMTP
from tests.harness import MARTIN_BOX, PASSWORDS, PEER_DOMAIN, SHARED, RunningDaemon
from tests.smtp import wire

SESSIONS = 2_000
CONCURRENCY = 16
DEADLINE_SECONDS = 600.0  # bounded in time as well as in count, even on a loaded machine
# What may stay per session: the loop's cancelled timers (swept in bulk), the grown
# WeakSet of tasks, caches with a fixed bound. Before the fix: 11-12 kB per plain
# session, tens of kB per session that sent data.
MAX_RETAINED_BYTES_PER_SESSION = 1024
MAX_OBJECTS_PER_SESSION = 5
MAX_BLOCKS_PER_SESSION = 20
TRACED_SESSIONS = 200

BODY = b"".join(b"Ligne %d du compte rendu, assez longue pour peser.\r\n" % i for i in range(600))


def message(sender: str, n: int) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{SHARED}>\r\nSubject: leak {n}\r\n"
        f"Message-ID: <leak-{n}@test>\r\n\r\n"
    ).encode() + BODY


async def plain_ehlo_quit(d: RunningDaemon, n: int) -> None:
    reader, writer = await wire.connect(d.ports["submission"])
    writer.write(b"EHLO leak.example\r\nQUIT\r\n")
    assert [c for c, _ in await wire.read_replies(reader, 2)] == [250, 221]
    await wire.close(writer)


async def pipelined_before_tls(d: RunningDaemon, n: int) -> None:
    """Commands and a message body pipelined in one burst without STARTTLS: refused
    line by line until the bad-command budget closes the session."""
    reader, writer = await wire.connect(d.ports["submission"])
    burst = f"EHLO leak.example\r\nMAIL FROM:<{MARTIN_BOX}>\r\nRCPT TO:<{SHARED}>\r\nDATA\r\n"
    writer.write(burst.encode() + BODY[:20_000] + b".\r\nQUIT\r\n")
    assert await wire.is_closed(reader)
    await wire.close(writer)


ACCEPTED = [0]  # messages accepted by the shapes below, to check the store at the end


async def accepted_implicit_tls(d: RunningDaemon, n: int) -> None:
    reader, writer = await wire.connect(d.ports["submission-tls"], tls=d.client_context())
    writer.write(b"EHLO leak.example\r\n" + wire.plain_auth("martin", PASSWORDS["martin"]))
    assert [c for c, _ in await wire.read_replies(reader, 2)] == [250, 235]
    writer.write(
        f"MAIL FROM:<{MARTIN_BOX}>\r\nRCPT TO:<{SHARED}>\r\nDATA\r\n".encode()
        + message(MARTIN_BOX, n)
        + b".\r\nQUIT\r\n"
    )
    assert [c for c, _ in await wire.read_replies(reader, 5)] == [250, 250, 354, 250, 221]
    ACCEPTED[0] += 1
    await wire.close(writer)


async def accepted_after_starttls(d: RunningDaemon, n: int) -> None:
    sender = f"dr.x@{PEER_DOMAIN}"
    reader, writer = await wire.connect(d.ports["inbound"])
    writer.write(b"EHLO mx.peer.example\r\n")
    await wire.read_reply(reader)
    await wire.starttls(reader, writer, d.client_context(cert="peer"))
    writer.write(
        f"EHLO mx.peer.example\r\nMAIL FROM:<{sender}>\r\nRCPT TO:<{SHARED}>\r\nDATA\r\n".encode()
    )
    assert [c for c, _ in await wire.read_replies(reader, 4)] == [250, 250, 250, 354]
    writer.write(message(sender, n) + b".\r\nQUIT\r\n")
    assert [c for c, _ in await wire.read_replies(reader, 2)] == [250, 221]
    ACCEPTED[0] += 1
    await wire.close(writer)


Shape = Callable[[RunningDaemon, int], Awaitable[None]]
# (shape, share of the sessions)
SHAPES: list[tuple[Shape, int]] = [
    (plain_ehlo_quit, 1000),
    (pipelined_before_tls, 600),
    (accepted_implicit_tls, 250),
    (accepted_after_starttls, 150),
]


def smtp_listeners(d: RunningDaemon) -> list[SmtpListener]:
    return [lst for lst in d.daemon.listeners if isinstance(lst, SmtpListener)]


def live_sessions() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, RelaySMTP))


async def run_sessions(d: RunningDaemon, plan: list[tuple[Shape, int]]) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    queue = iter(plan)

    async def worker() -> None:
        for shape, n in queue:
            assert time.monotonic() < deadline, "sessions did not finish in time"
            await shape(d, n)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def wait_listeners_empty(d: RunningDaemon) -> None:
    # The server sees each connection end a moment after the client does.
    for _ in range(600):
        if all(lst.open_sessions == 0 for lst in smtp_listeners(d)):
            return
        await asyncio.sleep(0.05)
    held = {lst.description: lst.open_sessions for lst in smtp_listeners(d)}
    raise AssertionError(f"listeners still hold sessions: {held}")


async def measured(d: RunningDaemon, plan: list[tuple[Shape, int]]) -> tuple[int, int, int]:
    """Run `plan` with the garbage collector off; (sessions alive without a collection,
    growth in gc-tracked objects, growth in allocated memory blocks), both after one."""
    gc.collect()
    objects, blocks = len(gc.get_objects()), sys.getallocatedblocks()
    gc.disable()  # dead sessions must go by reference counting alone
    try:
        await run_sessions(d, plan)
        await wait_listeners_empty(d)
        alive_without_gc = live_sessions()
    finally:
        gc.enable()
    gc.collect()
    return (
        alive_without_gc,
        len(gc.get_objects()) - objects,
        sys.getallocatedblocks() - blocks,
    )


def mixed(count: int, first: int = 0) -> list[tuple[Shape, int]]:
    """`count` sessions, the shapes in their shares, interleaved as real traffic."""
    total = sum(share for _, share in SHAPES)
    plan = [(shape, first + i) for shape, share in SHAPES for i in range(share * count // total)]
    return [plan[i] for k in range(4) for i in range(k, len(plan), 4)]


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_2000_sessions_leave_nothing_behind(daemon: RunningDaemon) -> None:
    await daemon.trust_peer()
    ACCEPTED[0] = 0
    # Warm up first: caches (verified passwords, compiled SQL, the loop's sets) reach
    # their size, so what follows measures what each session leaves.
    await run_sessions(daemon, mixed(40, first=100_000))
    plan = mixed(SESSIONS)
    assert len(plan) == SESSIONS
    alive_without_gc, objects, blocks = await measured(daemon, plan)
    assert alive_without_gc == 0
    assert live_sessions() == 0
    assert objects < SESSIONS * MAX_OBJECTS_PER_SESSION, objects
    assert blocks < SESSIONS * MAX_BLOCKS_PER_SESSION, blocks
    # Bytes, with tracemalloc (slow: on a sample of the same mix). A first traced
    # round fills what grows once under tracing; the second must add (almost) nothing.
    tracemalloc.start()
    try:
        await run_sessions(daemon, mixed(TRACED_SESSIONS // 2, first=200_000))
        await wait_listeners_empty(daemon)
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        await run_sessions(daemon, mixed(TRACED_SESSIONS, first=300_000))
        await wait_listeners_empty(daemon)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_session = (after - before) / TRACED_SESSIONS
    assert per_session < MAX_RETAINED_BYTES_PER_SESSION, (
        f"{after - before} bytes retained by {TRACED_SESSIONS} sessions ({per_session:.0f} B each)"
    )
    # and the accepted ones were really accepted
    stored = await daemon.store.messages(SHARED)
    assert len(stored) == ACCEPTED[0]
