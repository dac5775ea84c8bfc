"""A raw SMTP client over asyncio streams, for tests that must send what a polite
client would not (pipelining past the rules, data after STARTTLS, garbage): real
sockets on 127.0.0.1, real TLS, every read bounded by a timeout."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl

REPLY_TIMEOUT_SECONDS = 30.0  # generous: the machine may be loaded


class Closed(ConnectionError):
    """The server closed the connection before a complete reply."""


async def read_reply(
    reader: asyncio.StreamReader, timeout: float = REPLY_TIMEOUT_SECONDS
) -> tuple[int, bytes]:
    """One (possibly multi-line) reply: its code and its raw lines."""
    lines: list[bytes] = []
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line.endswith(b"\n"):
            raise Closed(b"".join(lines) + line)
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)


async def read_replies(reader: asyncio.StreamReader, n: int) -> list[tuple[int, bytes]]:
    return [await read_reply(reader) for _ in range(n)]


def plain_auth(login: str, password: str, authzid: str = "") -> bytes:
    blob = base64.b64encode(f"{authzid}\0{login}\0{password}".encode())
    return b"AUTH PLAIN " + blob + b"\r\n"


async def connect(
    port: int, *, tls: ssl.SSLContext | None = None, limit: int = 1 << 20
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a session (implicit TLS when `tls` is given) and read the greeting."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        port,
        ssl=tls,
        server_hostname="localhost" if tls else None,
        limit=limit,
    )
    code, text = await read_reply(reader)
    assert code == 220, text
    return reader, writer


async def starttls(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: ssl.SSLContext
) -> None:
    writer.write(b"STARTTLS\r\n")
    code, text = await read_reply(reader)
    assert code == 220, text
    await writer.start_tls(ctx, server_hostname="localhost")


async def close(writer: asyncio.StreamWriter) -> None:
    """Close without waiting long on a TLS close_notify the server may not send."""
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 5)


async def is_closed(reader: asyncio.StreamReader, timeout: float = REPLY_TIMEOUT_SECONDS) -> bool:
    """Whether the server ends the connection (EOF or reset) within `timeout`."""
    try:
        while await asyncio.wait_for(reader.read(65536), timeout):
            pass
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False
    return True
