"""Daemon memory across many SMTP sessions (issue 9: the listener kept every session).

Starts a daemon (a separate process, its own bench config in a temporary folder, all
listeners on 127.0.0.1), runs --sessions SMTP sessions against it, half plain
EHLO/QUIT, half an authenticated transaction pipelined in one write (EHLO, AUTH, then
MAIL, RCPT, DATA, the message and QUIT), and prints the daemon's resident memory
(VmRSS) after a warm-up and at each tenth of the run, then the growth per session.
Bounded: --sessions in total and --max-seconds wall time. It asserts nothing.

    .venv/bin/python -m bench.smtp_sessions --engine sqlite --sessions 10000
    .venv/bin/python -m bench.smtp_sessions --engine sqlite --sessions 10000 --mode starttls

No reference figure: Postfix's smtpd is one process per connection, recycled after
`max_use` sessions, so its RSS after N sessions measures nothing comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import subprocess
import sys
import tempfile
import time
from base64 import b64encode
from pathlib import Path

from bench.smtp_load import (
    PASSWORD,
    RECIPIENT,
    SENDER,
    drop_schema,
    free_port,
    make_message,
    read_reply,
    rss_kb,
    write_bench_config,
)

WARM_UP_SESSIONS = 500


class Client:
    def __init__(self, port: int, mode: str, ca: Path) -> None:
        self.port = port
        self.mode = mode
        self.ctx = ssl.create_default_context(cafile=str(ca))
        blob = b64encode(b"\0martin\0" + PASSWORD.encode())
        self.auth = b"AUTH PLAIN " + blob + b"\r\n"

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        await read_reply(reader)
        if self.mode == "starttls":
            writer.write(b"EHLO bench.example\r\nSTARTTLS\r\n")
            await read_reply(reader)
            await read_reply(reader)
            await writer.start_tls(self.ctx, server_hostname="localhost")
        return reader, writer

    async def ehlo_quit(self) -> None:
        reader, writer = await self._open()
        writer.write(b"EHLO bench.example\r\nQUIT\r\n")
        await read_reply(reader)
        await read_reply(reader)
        await self._close(writer)

    async def pipelined(self, data: bytes) -> None:
        reader, writer = await self._open()
        writer.write(b"EHLO bench.example\r\n" + self.auth)
        await read_reply(reader)
        code, text = await read_reply(reader)
        if code != 235:
            raise RuntimeError(f"AUTH refused: {text!r}")
        writer.write(
            f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode()
            + data
            + b".\r\nQUIT\r\n"
        )
        codes = [(await read_reply(reader))[0] for _ in range(5)]
        if codes != [250, 250, 354, 250, 221]:
            raise RuntimeError(f"pipelined transaction answered {codes}")
        await self._close(writer)

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        writer.close()
        with contextlib.suppress(TimeoutError, OSError, ssl.SSLError):
            await asyncio.wait_for(writer.wait_closed(), 5)


async def run(
    client: Client, pid: int, sessions: int, concurrency: int, size: int, max_seconds: float
) -> None:
    data = make_message(size, 0)
    deadline = time.monotonic() + max_seconds

    async def batch(count: int, offset: int) -> int:
        numbers = iter(range(offset, offset + count))
        done = 0

        async def worker() -> None:
            nonlocal done
            for n in numbers:
                if time.monotonic() > deadline:
                    return
                await (client.ehlo_quit() if n % 2 == 0 else client.pipelined(data))
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done

    started = time.perf_counter()
    await batch(WARM_UP_SESSIONS, 0)
    await asyncio.sleep(1.0)
    base = rss_kb(pid, "VmRSS")
    print(f"after {WARM_UP_SESSIONS} warm-up sessions: RSS {base / 1024:.1f} MiB")
    step = max(1, sessions // 10)
    total = 0
    while total < sessions and time.monotonic() < deadline:
        total += await batch(min(step, sessions - total), WARM_UP_SESSIONS + total)
        await asyncio.sleep(0.5)  # let the daemon see the last connections end
        rss = rss_kb(pid, "VmRSS")
        print(f"  after {total:>6} sessions: RSS {rss / 1024:7.1f} MiB")
    elapsed = time.perf_counter() - started
    rss = rss_kb(pid, "VmRSS")
    print(
        f"{total} sessions ({total // 2} EHLO/QUIT, {total - total // 2} pipelined {size} B "
        f"transactions) in {elapsed:.1f} s: RSS {base / 1024:.1f} -> {rss / 1024:.1f} MiB, "
        f"{(rss - base) * 1024 / max(total, 1):.0f} B per session; "
        f"peak {rss_kb(pid, 'VmHWM') / 1024:.1f} MiB"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--mode", choices=("plain", "starttls"), default="plain")
    p.add_argument("--sessions", type=int, default=10_000)
    p.add_argument("--size", type=int, default=10 * 1024, help="bytes per message")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--max-seconds", type=float, default=900.0)
    args = p.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="mss-bench-"))
    ports = {"plain": free_port(), "starttls": free_port()}
    config, ca = write_bench_config(folder, args.engine, ports)
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "mss-relay: ready" in line:
                break
        client = Client(ports[args.mode], args.mode, ca)
        print(f"engine={args.engine} mode={args.mode} concurrency={args.concurrency}")
        asyncio.run(
            run(client, proc.pid, args.sessions, args.concurrency, args.size, args.max_seconds)
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if args.engine == "postgresql":
            asyncio.run(drop_schema(config))


if __name__ == "__main__":
    main()
