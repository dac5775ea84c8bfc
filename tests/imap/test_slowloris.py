"""Issue 9 item 5: slowloris on IMAP, and the connection caps (real TLS, real sockets).

Before: the pre-authentication timeout was restarted by every byte, so one byte a
second kept a connection open for ever, and a listener accepted 500 of 500 connections
from one address.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Iterator

from tests.harness import PASSWORDS, RunningDaemon, daemon_fixture

LIMITS = """
imap_login_timeout_seconds = 3
imap_idle_timeout_seconds = 3
max_connections_per_ip = 3
max_connections_per_listener = 5
"""


d = daemon_fixture(limits=LIMITS)


def tls(d: RunningDaemon, source: str = "127.0.0.1") -> ssl.SSLSocket:
    sock = socket.create_connection(
        ("127.0.0.1", d.ports["imap-tls"]), timeout=30, source_address=(source, 0)
    )
    return d.client_context().wrap_socket(sock, server_hostname="localhost")


def line(sock: ssl.SSLSocket) -> bytes:
    out = b""
    while not out.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        out += chunk
    return out


def dribble(sock: ssl.SSLSocket, data: bytes, *, every: float, limit: float) -> tuple[bytes, float]:
    """Send `data` a byte every `every` seconds until the server speaks or closes."""
    started = time.monotonic()
    sock.settimeout(every)
    for byte in data:
        try:
            answer = sock.recv(4096)
            return answer, time.monotonic() - started
        except TimeoutError:
            pass
        except (ConnectionError, ssl.SSLError):
            return b"", time.monotonic() - started
        if time.monotonic() - started > limit:
            break
        with contextlib.suppress(OSError):
            sock.sendall(bytes([byte]))
    return b"(still open)", time.monotonic() - started


@contextlib.contextmanager
def connections(d: RunningDaemon, sources: list[str]) -> Iterator[list[bytes]]:
    socks: list[ssl.SSLSocket] = []
    greetings: list[bytes] = []
    try:
        for source in sources:
            sock = tls(d, source)
            socks.append(sock)
            greetings.append(line(sock))
        yield greetings
    finally:
        for sock in socks:
            sock.close()


async def test_a_byte_a_second_no_longer_keeps_the_login_open(d: RunningDaemon) -> None:
    def run() -> tuple[bytes, bytes, float]:
        with tls(d) as sock:
            greeting = line(sock)
            # A LOGIN that never ends: a byte every half second, for up to 60 s.
            answer, elapsed = dribble(sock, b"a1 LOGIN " + b"x" * 200, every=0.5, limit=60)
            return greeting, answer, elapsed

    greeting, answer, elapsed = await asyncio.to_thread(run)
    assert greeting.startswith(b"* OK")
    assert answer == b"* BYE No login within 3 seconds of connecting: closing\r\n"
    assert 2.5 <= elapsed < 30  # cut at the total, not restarted by each byte


async def test_after_login_idle_is_per_command_not_per_byte(d: RunningDaemon) -> None:
    def run() -> tuple[list[bytes], bytes, float]:
        with tls(d) as sock:
            line(sock)
            sock.sendall(f"a1 LOGIN dupont {PASSWORDS['dupont']}\r\n".encode())
            assert b"a1 OK" in line(sock)
            # Whole commands keep a session alive past the 3 s autologout timer...
            answers = []
            for n in range(5):
                time.sleep(1)
                sock.sendall(b"n%d NOOP\r\n" % n)
                answers.append(line(sock))
            # ... a command dribbled a byte at a time does not.
            answer, elapsed = dribble(sock, b"b1 NOOP" + b" " * 200, every=0.5, limit=60)
            return answers, answer, elapsed

    answers, answer, elapsed = await asyncio.to_thread(run)
    assert all(a.startswith(b"n%d OK" % n) for n, a in enumerate(answers))
    assert answer == b"* BYE Autologout: idle for too long\r\n"
    assert 2.5 <= elapsed < 30


async def test_connections_per_address_are_capped(d: RunningDaemon) -> None:
    def run() -> tuple[list[bytes], list[bytes]]:
        with connections(d, ["127.0.0.1"] * 4) as first, connections(d, ["127.0.0.2"]) as other:
            return first, other

    first, other = await asyncio.to_thread(run)
    assert all(g.startswith(b"* OK") for g in first[:3])
    assert first[3] == (
        b"* BYE Too many connections from 127.0.0.1 (limit 3): close some, then try again\r\n"
    )
    assert other[0].startswith(b"* OK")  # another address is not held back

    tls_port = f":{d.ports['imap-tls']} "
    service = next(lst for lst in d.daemon.listeners if tls_port in lst.description)
    for _ in range(300):  # the closed connections are counted out
        if not getattr(service, "per_ip", None):
            break
        await asyncio.sleep(0.1)
    assert getattr(service, "per_ip", None) == {}

    def once_more() -> bytes:
        with tls(d) as sock:
            return line(sock)

    again = await asyncio.to_thread(once_more)
    assert again.startswith(b"* OK")


async def test_connections_per_listener_are_capped(d: RunningDaemon) -> None:
    def run() -> list[bytes]:
        sources = ["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
        with connections(d, sources) as greetings:
            return greetings

    greetings = await asyncio.to_thread(run)
    assert all(g.startswith(b"* OK") for g in greetings[:5])
    assert greetings[5] == b"* BYE Server busy: 5 connections already, try again later\r\n"
