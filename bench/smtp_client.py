"""One SMTP load client for mss-relay and the reference Postfix alike, so that a
comparison runs the same load on both: N messages over C concurrent sessions,
MAIL/RCPT/DATA pipelined (RFC 2920), either one connection per message (connect,
EHLO, [STARTTLS, EHLO], [AUTH PLAIN], one message, QUIT) or one connection per
session. A message counts when its 250 has arrived (durable acceptance). Bounded by
the message count and a wall-clock limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
import time
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

SOCKET_SECONDS = 60.0


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    starttls: bool
    ca: Path | None  # verify the server's certificate against this bundle
    login: str | None  # AUTH PLAIN when set
    password: str | None
    sender: str
    recipient: str


@dataclass(frozen=True)
class SmtpResult:
    messages: int
    seconds: float
    latencies: tuple[float, ...]  # per message: first byte of MAIL to its 250
    errors: tuple[str, ...]

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


def make_message(sender: str, recipient: str, size: int, n: int) -> bytes:
    """A plain-text message of about `size` bytes (headers included)."""
    head = (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: bench {n}\r\n"
        f"Message-ID: <bench-{n}-{secrets.token_hex(4)}@bench>\r\n"
        "Date: Sun, 22 Nov 2026 06:00:00 +0100\r\n\r\n"
    ).encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


def dot_stuff(data: bytes) -> bytes:
    data = data.replace(b"\r\n.", b"\r\n..")
    return (b"." + data) if data.startswith(b".") else data


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), SOCKET_SECONDS)
        if not line:
            raise ConnectionError("server closed the connection")
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)


async def expect(reader: asyncio.StreamReader, code: int, what: str) -> bytes:
    got, text = await read_reply(reader)
    if got != code:
        raise RuntimeError(f"{what}: expected {code}, got {text[:200]!r}")
    return text


async def open_session(t: SmtpTarget) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(t.host, t.port, limit=1 << 20), SOCKET_SECONDS
    )
    await expect(reader, 220, "greeting")
    writer.write(b"EHLO bench.example\r\n")
    await expect(reader, 250, "EHLO")
    if t.starttls:
        ctx = ssl.create_default_context(cafile=str(t.ca) if t.ca else None)
        writer.write(b"STARTTLS\r\n")
        await expect(reader, 220, "STARTTLS")
        await asyncio.wait_for(writer.start_tls(ctx, server_hostname="localhost"), SOCKET_SECONDS)
        writer.write(b"EHLO bench.example\r\n")
        await expect(reader, 250, "EHLO after STARTTLS")
    if t.login is not None:
        blob = b64encode(f"\0{t.login}\0{t.password}".encode()).decode()
        writer.write(f"AUTH PLAIN {blob}\r\n".encode())
        await expect(reader, 235, "AUTH")
    return reader, writer


async def send_one(
    t: SmtpTarget, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stuffed: bytes
) -> float:
    started = time.perf_counter()
    mail = f"MAIL FROM:<{t.sender}> SIZE={len(stuffed)}\r\n"
    writer.write(f"{mail}RCPT TO:<{t.recipient}>\r\nDATA\r\n".encode())
    await expect(reader, 250, "MAIL")
    await expect(reader, 250, "RCPT")
    await expect(reader, 354, "DATA")
    writer.write(stuffed)
    await expect(reader, 250, "end of DATA")
    return time.perf_counter() - started


async def close_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(b"QUIT\r\n")
        await read_reply(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def run_load(
    t: SmtpTarget,
    *,
    messages: int,
    size: int,
    concurrency: int,
    reuse: bool,
    max_seconds: float = 300.0,
) -> SmtpResult:
    """Send `messages` messages; return how many got their 250 and how long it took."""
    payloads = []
    for n in range(min(messages, 64)):
        data = dot_stuff(make_message(t.sender, t.recipient, size, n))
        payloads.append(data + (b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"))
    counter = iter(range(messages))
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + max_seconds

    async def worker() -> None:
        session = None
        try:
            for n in counter:
                if time.monotonic() > deadline:
                    break
                if session is None:
                    session = await open_session(t)
                latencies.append(await send_one(t, *session, payloads[n % len(payloads)]))
                if not reuse:
                    await close_session(*session)
                    session = None
            if session is not None:
                await close_session(*session)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            if session is not None:
                session[1].close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return SmtpResult(len(latencies), elapsed, tuple(latencies), tuple(errors))
