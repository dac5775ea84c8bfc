"""A loopback proxy that lets a client without STARTTLS test an IMAP server's port 143.

imaptest (and other load tools) speak plain IMAP or implicit TLS only. To run them
against the STARTTLS listener, this proxy accepts plain connections on ``--listen``,
opens one to ``--upstream`` for each, reads the server's greeting, issues
``STARTTLS`` (RFC 3501 §6.2.1), completes the TLS handshake, and from then on relays
bytes both ways. The client sees a greeting without capabilities (so it asks for
them over the now encrypted session) and never the pre-TLS exchange: what it tests
is exactly what a STARTTLS client gets after the upgrade.

    python -m bench.imap_starttls_proxy --listen 127.0.0.1:32144 --upstream 127.0.0.1:32143
    ../shared/imaptest/run.sh compliance --port 32144 --user martin --pass martin-demo

Loopback only; the upstream certificate is checked against ``--cafile`` when given
(else not checked, like imaptest's ``ssl=any-cert``). Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import sys
from collections.abc import Awaitable, Callable

GREETING = b"* OK IMAP4rev1 server ready (STARTTLS done by imap_starttls_proxy)\r\n"
LINE_LIMIT = 64 * 1024


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise argparse.ArgumentTypeError(f"{text}: loopback addresses only")
    return host, int(port)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _upgrade(
    upstream: tuple[str, int], context: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*upstream, limit=LINE_LIMIT)
    greeting = await asyncio.wait_for(reader.readline(), 10)
    if not greeting.startswith(b"* OK"):
        raise ConnectionError(f"upstream greeting: {greeting[:80]!r}")
    writer.write(b"P0 STARTTLS\r\n")
    await writer.drain()
    while True:
        line = await asyncio.wait_for(reader.readline(), 10)
        if not line:
            raise ConnectionError("upstream closed during STARTTLS")
        if line.startswith(b"P0 "):
            if not line.startswith(b"P0 OK"):
                raise ConnectionError(f"upstream refused STARTTLS: {line[:80]!r}")
            break
    await writer.start_tls(context, server_hostname="localhost")
    return reader, writer


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _handler(upstream: tuple[str, int], context: ssl.SSLContext) -> Handler:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await _upgrade(upstream, context)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            client_w.write(b"* BYE proxy: " + str(exc).encode()[:200] + b"\r\n")
            with contextlib.suppress(Exception):
                await client_w.drain()
                client_w.close()
            return
        client_w.write(GREETING)
        await client_w.drain()
        await asyncio.gather(_pump(client_r, up_w), _pump(up_r, client_w))

    return handle


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=_address, required=True, help="plain side, HOST:PORT")
    parser.add_argument("--upstream", type=_address, required=True, help="STARTTLS port")
    parser.add_argument("--cafile", help="CA bundle that must sign the upstream certificate")
    args = parser.parse_args(argv)
    context = ssl.create_default_context(cafile=args.cafile)
    if args.cafile is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    server = await asyncio.start_server(_handler(args.upstream, context), *args.listen)
    listen, up = args.listen, args.upstream
    print(f"imap_starttls_proxy: {listen[0]}:{listen[1]} -> STARTTLS {up[0]}:{up[1]}", flush=True)
    async with server:
        await server.serve_forever()
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main()))
