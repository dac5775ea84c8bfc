"""IMAP load benchmark (run by hand; prints figures, passes or fails nothing).

    .venv/bin/python -m bench.imap_load [--engine sqlite|postgresql] [--messages 10000]
        [--clients 10] [--cycles 20] [--seconds 10] [--box shared|personal]

Starts a daemon in this process on 127.0.0.1 (dev PKI, temporary directory; on
PostgreSQL a fresh schema in RELAY_TEST_DATABASE_URL, dropped afterwards), fills one
box with N messages through the store, then drives it from a separate client process
(blocking TLS sockets, one thread per client) so that clients do not share the
server's event loop:

1. cycles: each client repeats login / select / fetch headers / fetch a body /
   store flags / logout; cycles/s and p50/p99 of a cycle;
2. `FETCH 1:* (UID FLAGS)` and `SEARCH UNSEEN` on the full box (median of 5);
3. sessions kept open: each client loops over fetch headers / fetch body / store
   flags for `--seconds`; commands/s.

Everything is bounded: counts, durations and socket timeouts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SOCKET_TIMEOUT = 30.0


# ------------------------------------------------------------------ client side


class Client:
    """A minimal blocking IMAP client over TLS."""

    def __init__(self, port: int, ca: str) -> None:
        ctx = ssl.create_default_context(cafile=ca)
        raw = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.buf = b""
        self.n = 0
        self.read_until(b"* OK")

    def read_until(self, prefix: bytes) -> list[bytes]:
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise EOFError("server closed the connection")
                self.buf += chunk
            line, _, self.buf = self.buf.partition(b"\r\n")
            # skip literal payloads: "{n}" at the end of a line
            if line.endswith(b"}") and b"{" in line:
                size = int(line[line.rindex(b"{") + 1 : -1])
                while len(self.buf) < size:
                    chunk = self.sock.recv(1 << 20)
                    if not chunk:
                        raise EOFError("server closed the connection")
                    self.buf += chunk
                self.buf = self.buf[size:]
            lines.append(line)
            if line.startswith(prefix):
                return lines

    def cmd(self, text: str) -> list[bytes]:
        self.n += 1
        tag = f"t{self.n}".encode()
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        lines = self.read_until(tag + b" ")
        if not lines[-1].startswith(tag + b" OK"):
            raise RuntimeError(f"{text!r}: {lines[-1]!r}")
        return lines

    def close(self) -> None:
        self.sock.close()


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def client_main(args: argparse.Namespace) -> None:
    """Run in a separate process; prints one JSON object."""
    uids = list(range(1, args.messages + 1))
    out: dict[str, Any] = {}
    lock = threading.Lock()

    def one_cycle(rng: random.Random) -> None:
        c = Client(args.port, args.ca)
        c.cmd(f'LOGIN {args.login} "{args.password}"')
        c.cmd(f'SELECT "{args.mailbox}"')
        uid = rng.choice(uids)
        c.cmd(f"UID FETCH {uid} (FLAGS BODY.PEEK[HEADER])")
        c.cmd(f"UID FETCH {uid} (BODY.PEEK[])")
        c.cmd(f"UID STORE {uid} {rng.choice('+-')}FLAGS.SILENT (\\Flagged)")
        c.sock.sendall(b"z LOGOUT\r\n")
        c.read_until(b"z ")
        c.close()

    # 1. cycles
    latencies: list[float] = []

    def cycles(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(args.cycles):
            t0 = time.perf_counter()
            one_cycle(rng)
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=cycles, args=(i,)) for i in range(args.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    elapsed = time.perf_counter() - t0
    out["cycles"] = len(latencies)
    out["cycles_per_s"] = len(latencies) / elapsed
    out["cycle_p50_ms"] = _pct(latencies, 0.50) * 1000
    out["cycle_p99_ms"] = _pct(latencies, 0.99) * 1000

    # 2. whole-box commands
    c = Client(args.port, args.ca)
    c.cmd(f'LOGIN {args.login} "{args.password}"')
    c.cmd(f'SELECT "{args.mailbox}"')
    for name, text in (
        ("fetch_all_flags_ms", "FETCH 1:* (UID FLAGS)"),
        ("search_unseen_ms", "SEARCH UNSEEN"),
    ):
        times = []
        for _ in range(5):
            t1 = time.perf_counter()
            lines = c.cmd(text)
            times.append(time.perf_counter() - t1)
        out[name] = statistics.median(times) * 1000
        out[name.replace("_ms", "_lines")] = len(lines) - 1
    c.close()

    # 3. sessions kept open
    counts = [0] * args.clients
    stop_at = time.perf_counter() + args.seconds

    def steady(i: int) -> None:
        rng = random.Random(1000 + i)
        cl = Client(args.port, args.ca)
        cl.cmd(f'LOGIN {args.login} "{args.password}"')
        cl.cmd(f'SELECT "{args.mailbox}"')
        n = 0
        while time.perf_counter() < stop_at:
            uid = rng.choice(uids)
            cl.cmd(f"UID FETCH {uid} (FLAGS BODY.PEEK[HEADER])")
            cl.cmd(f"UID FETCH {uid} (BODY.PEEK[])")
            cl.cmd(f"UID STORE {uid} {rng.choice('+-')}FLAGS.SILENT (\\Flagged)")
            n += 3
        counts[i] = n
        cl.close()

    threads = [threading.Thread(target=steady, args=(i,)) for i in range(args.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=args.seconds + 120)
    out["steady_commands_per_s"] = sum(counts) / (time.perf_counter() - t0)
    print(json.dumps(out))


# ------------------------------------------------------------------ server side


async def fill(store: Any, box: str, n: int) -> float:
    from relay.audit.events import MessageAccepted
    from relay.message.analysis import analyse
    from relay.store.store import Acceptance

    async def one(i: int) -> None:
        raw = (
            f"From: Dr Martin <martin@cpts-demo.mssante.fr>\r\nTo: <{box}>\r\n"
            f"Subject: Compte rendu {i}\r\nDate: Mon, 02 Mar 2026 10:00:00 +0100\r\n"
            f"Message-ID: <bench{i}@cabinet.example>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n" + "Ligne de compte rendu.\r\n" * 40
        ).encode()
        meta = analyse(raw)
        await store.accept(
            Acceptance(
                raw=raw,
                meta=meta.to_json(),
                sender="martin@cpts-demo.mssante.fr",
                local_recipients=(box,),
                remote_recipients=(),
                message_id=meta.message_id,
                audit=lambda qid: MessageAccepted(
                    protocol="bench",
                    message_id=meta.message_id,
                    sender="martin@cpts-demo.mssante.fr",
                    recipients=(box,),
                    size_bytes=len(raw),
                    queue_id=qid,
                ),
                flags="\\Seen" if i % 2 else "",
            )
        )

    t0 = time.perf_counter()
    for start in range(0, n, 200):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + 200))))
    return time.perf_counter() - t0


async def server_main(args: argparse.Namespace) -> None:
    from relay.config.model import StorageConfig
    from relay.tls.pki import generate_dev_pki
    from tests.harness import PASSWORDS, SHARED, start_daemon

    logging_quiet()
    with tempfile.TemporaryDirectory(prefix="imap-bench-") as tmp:
        directory = Path(tmp)
        pki = generate_dev_pki(directory / "pki", "localhost")
        schema = None
        if args.engine == "sqlite":
            storage = StorageConfig(
                url=f"sqlite+aiosqlite:///{directory / 'relay.db'}", key_file=directory / "k"
            )
        else:
            schema = f"bench_{secrets.token_hex(4)}"
            url = os.environ.get(
                "RELAY_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
            )
            storage = StorageConfig(url=url, key_file=directory / "k", schema=schema)
        running = await start_daemon(directory, pki, storage)
        try:
            if args.box == "shared":
                box, login, mailbox = SHARED, "martin", f"Partages/{SHARED}/INBOX"
            else:
                box, login, mailbox = "martin@cpts-demo.mssante.fr", "martin", "INBOX"
            took = await fill(running.store, box, args.messages)
            print(f"filled {box} with {args.messages} messages in {took:.1f} s", flush=True)
            cmd = [
                sys.executable,
                "-m",
                "bench.imap_load",
                "client",
                "--port",
                str(running.ports["imap-tls"]),
                "--ca",
                str(pki.ca_bundle),
                "--login",
                login,
                "--password",
                PASSWORDS[login],
                "--mailbox",
                mailbox,
                "--messages",
                str(args.messages),
                "--clients",
                str(args.clients),
                "--cycles",
                str(args.cycles),
                "--seconds",
                str(args.seconds),
            ]
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE)
            stdout, _ = await asyncio.wait_for(proc.communicate(), timeout=1800)
            result = json.loads(stdout.decode().strip().splitlines()[-1])
            print(f"engine {args.engine}, box {args.box} ({mailbox}), {args.clients} clients")
            print(
                f"cycles (login/select/fetch headers/fetch body/store/logout): "
                f"{result['cycles']} in all, {result['cycles_per_s']:.1f} cycles/s, "
                f"p50 {result['cycle_p50_ms']:.1f} ms, p99 {result['cycle_p99_ms']:.1f} ms"
            )
            print(
                f"FETCH 1:* (UID FLAGS) on {args.messages}: {result['fetch_all_flags_ms']:.1f} ms"
                f" ({result['fetch_all_flags_lines']} lines)"
            )
            print(f"SEARCH UNSEEN on {args.messages}: {result['search_unseen_ms']:.1f} ms")
            print(
                f"sessions kept open, {args.clients} clients, {args.seconds} s: "
                f"{result['steady_commands_per_s']:.0f} commands/s"
            )
        finally:
            await running.daemon.stop("bench finished", grace_seconds=2.0)
            if schema is not None:
                import asyncpg

                conn = await asyncpg.connect(
                    storage.url.replace("postgresql+asyncpg", "postgresql")
                )
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                await conn.close()


def logging_quiet() -> None:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("role", nargs="?", default="server", choices=["server", "client"])
    parser.add_argument("--engine", default="sqlite", choices=["sqlite", "postgresql"])
    parser.add_argument("--box", default="shared", choices=["shared", "personal"])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--cycles", type=int, default=20, help="cycles per client")
    parser.add_argument("--seconds", type=int, default=10, help="steady phase duration")
    parser.add_argument("--port", type=int)
    parser.add_argument("--ca")
    parser.add_argument("--login")
    parser.add_argument("--password")
    parser.add_argument("--mailbox")
    args = parser.parse_args()
    args.messages = max(1, min(args.messages, 200_000))
    args.clients = max(1, min(args.clients, 200))
    args.cycles = max(1, min(args.cycles, 1000))
    args.seconds = max(1, min(args.seconds, 600))
    if args.role == "client":
        client_main(args)
    else:
        asyncio.run(server_main(args))


if __name__ == "__main__":
    main()
