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
   flags for `--seconds`; commands/s;
4. the search extensions on the full box: `SORT (DATE)`, `SORT (SUBJECT)`,
   `THREAD REFERENCES` and `SEARCH TEXT word`, the first run (cold) and the median
   of 5 (warm), in ms. With `--dovecot SCRIPT` the same messages are appended to the
   reference Dovecot (started by SCRIPT under `flock REFERENCE_LOCK`, stopped after)
   and the same commands timed there, in the same sitting; the ratio is printed.
   `--only-extensions` skips phases 1 to 3.

The messages are varied for phase 4: subjects with and without ``Re:``, a thread of
five messages at a time chained by References, dates a minute apart in mixed zones,
and the word "urgent" in one body of a hundred.

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
REFERENCE_LOCK = "/work/team/reference.lock"
# The commands of phase 4, and a label each.
EXTENSION_COMMANDS: tuple[tuple[str, str], ...] = (
    ("sort_date", "SORT (DATE) UTF-8 ALL"),
    ("sort_subject", "SORT (SUBJECT) UTF-8 ALL"),
    ("thread_references", "THREAD REFERENCES UTF-8 ALL"),
    ("search_text", "SEARCH TEXT urgent"),
)


def bench_message(i: int, box: str) -> bytes:
    """Message number `i` of the bench box (the same for mss-relay and Dovecot)."""
    thread, pos = divmod(i, 5)
    refs = " ".join(f"<bench{thread * 5 + k}@cabinet.example>" for k in range(pos))
    zone = ("+0100", "+0000", "-0500")[i % 3]
    minute = i % 60
    hour = (i // 60) % 24
    day = 1 + (i // 1440) % 28
    subject = ("Re: " * min(pos, 2)) + f"Compte rendu {thread % 700}"
    word = "urgent" if i % 100 == 7 else "courant"
    return (
        f"From: Dr Martin {i % 37} <martin{i % 37}@cpts-demo.mssante.fr>\r\nTo: <{box}>\r\n"
        f"Subject: {subject}\r\nDate: Mon, {day:02d} Mar 2026 {hour:02d}:{minute:02d}:00 {zone}\r\n"
        f"Message-ID: <bench{i}@cabinet.example>\r\n"
        + (f"References: {refs}\r\n" if refs else "")
        + "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + "Ligne de compte rendu.\r\n" * 20
        + f"Suivi {word}.\r\n"
        + "Ligne de compte rendu.\r\n" * 20
    ).encode()


def time_extensions(c: Client) -> dict[str, float]:
    """Phase 4 on the selected box: first run and median of 5 of each command (ms)."""
    out: dict[str, float] = {}
    for name, text in EXTENSION_COMMANDS:
        times = []
        for _ in range(6):
            t1 = time.perf_counter()
            lines = c.cmd(text)
            times.append(time.perf_counter() - t1)
            if not lines[-1].split(b" ", 2)[1].startswith(b"OK"):
                raise RuntimeError(f"{text}: {lines[-1]!r}")
        out[f"{name}_first_ms"] = times[0] * 1000
        out[f"{name}_ms"] = statistics.median(times[1:]) * 1000
    return out


# ------------------------------------------------------------------ client side


class Client:
    """A minimal blocking IMAP client over TLS."""

    def __init__(self, port: int, ca: str) -> None:
        ctx = ssl.create_default_context(cafile=ca)
        raw = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.buf = b""
        self.pos = 0
        self.n = 0
        self.read_until(b"* OK")

    @classmethod
    def unverified(cls, port: int) -> Client:
        """For the reference server on loopback, whose certificate is its own."""
        self = cls.__new__(cls)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
        self.sock = ctx.wrap_socket(raw)
        self.buf = b""
        self.pos = 0
        self.n = 0
        self.read_until(b"* OK")
        return self

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError("server closed the connection")
        # Only what is left is copied, once per read: a 100,000-line answer costs
        # linear time in the client, as in any real one.
        self.buf = self.buf[self.pos :] + chunk
        self.pos = 0

    def read_until(self, prefix: bytes) -> list[bytes]:
        lines = []
        while True:
            end = self.buf.find(b"\r\n", self.pos)
            while end < 0:
                self._more()
                end = self.buf.find(b"\r\n", self.pos)
            line = self.buf[self.pos : end]
            self.pos = end + 2
            # skip literal payloads: "{n}" at the end of a line
            if line.endswith(b"}") and b"{" in line:
                size = int(line[line.rindex(b"{") + 1 : -1])
                while len(self.buf) - self.pos < size:
                    self._more()
                self.pos += size
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
    if args.only_extensions:
        c = Client(args.port, args.ca)
        c.cmd(f'LOGIN {args.login} "{args.password}"')
        c.cmd(f'SELECT "{args.mailbox}"')
        out.update(time_extensions(c))
        c.close()
        print(json.dumps(out))
        return
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

    # 4. the search extensions
    c = Client(args.port, args.ca)
    c.cmd(f'LOGIN {args.login} "{args.password}"')
    c.cmd(f'SELECT "{args.mailbox}"')
    out.update(time_extensions(c))
    c.close()
    print(json.dumps(out))


def reference_main(args: argparse.Namespace) -> None:
    """Phase 4 against the reference Dovecot (already started): fill a fresh folder
    with the same messages by MULTIAPPEND, then time the same commands."""
    c = Client.unverified(args.port)
    c.cmd(f'LOGIN {args.login} "{args.password}"')
    c.n += 1
    c.sock.sendall(b'r%d DELETE "bench"\r\n' % c.n)  # may not exist: NO is fine
    c.read_until(b"r%d " % c.n)
    c.cmd('CREATE "bench"')
    t0 = time.perf_counter()
    for start in range(0, args.messages, 200):
        parts = []
        for i in range(start, min(args.messages, start + 200)):
            raw = bench_message(i, "secretariat@cpts-demo.mssante.fr")
            parts.append(b" {%d+}\r\n" % len(raw) + raw)
        c.n += 1
        c.sock.sendall(b"r%d APPEND bench" % c.n + b"".join(parts) + b"\r\n")
        last = c.read_until(b"r%d " % c.n)[-1]
        if b" OK" not in last:
            raise RuntimeError(f"reference APPEND: {last!r}")
    filled = time.perf_counter() - t0
    c.cmd('SELECT "bench"')
    out: dict[str, Any] = {"filled_s": filled}
    out.update(time_extensions(c))
    c.cmd('DELETE "bench"')
    c.close()
    print(json.dumps(out))


def run_reference(args: argparse.Namespace) -> dict[str, Any] | None:
    """Start Dovecot under the team lock, run `reference_main` in a subprocess, stop it."""
    script = args.dovecot
    inner = (
        f"{script} start >/dev/null && "
        f"{sys.executable} -m bench.imap_load reference --port {args.dovecot_port} "
        f"--login {args.dovecot_user} --password {args.dovecot_password} "
        f"--messages {args.messages}; rc=$?; {script} stop >/dev/null; exit $rc"
    )
    proc = subprocess.run(
        ["flock", REFERENCE_LOCK, "sh", "-c", inner],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        print(f"reference run failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        return None
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def print_extensions(result: dict[str, Any], ref: dict[str, Any] | None, n: int) -> None:
    for name, text in EXTENSION_COMMANDS:
        ours, first = result[f"{name}_ms"], result[f"{name}_first_ms"]
        line = f"{text} on {n}: {ours:.1f} ms (first run {first:.1f} ms)"
        if ref is not None:
            theirs, tfirst = ref[f"{name}_ms"], ref[f"{name}_first_ms"]
            line += (
                f"; Dovecot {theirs:.1f} ms (first run {tfirst:.1f} ms), "
                f"ratio {ours / max(theirs, 0.001):.2f}"
            )
        print(line)


# ------------------------------------------------------------------ server side


async def fill(store: Any, box: str, n: int) -> float:
    from relay.audit.events import MessageAccepted
    from relay.message.analysis import analyse
    from relay.store.store import Acceptance

    async def one(i: int) -> None:
        raw = bench_message(i, box)
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
            if args.only_extensions:
                cmd.append("--only-extensions")
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE)
            stdout, _ = await asyncio.wait_for(proc.communicate(), timeout=1800)
            result = json.loads(stdout.decode().strip().splitlines()[-1])
            print(f"engine {args.engine}, box {args.box} ({mailbox}), {args.clients} clients")
            ref = run_reference(args) if args.dovecot else None
            if ref is not None:
                print(f"Dovecot filled with the same {args.messages} in {ref['filled_s']:.1f} s")
            print_extensions(result, ref, args.messages)
            if args.only_extensions:
                return
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
    parser.add_argument(
        "role", nargs="?", default="server", choices=["server", "client", "reference"]
    )
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
    parser.add_argument("--only-extensions", action="store_true", help="phase 4 only")
    parser.add_argument("--dovecot", help="the reference Dovecot script (start|stop)")
    parser.add_argument("--dovecot-port", type=int, default=10993)
    parser.add_argument("--dovecot-user", default="testuser")
    parser.add_argument("--dovecot-password", default="testpass")
    args = parser.parse_args()
    args.messages = max(1, min(args.messages, 200_000))
    args.clients = max(1, min(args.clients, 200))
    args.cycles = max(1, min(args.cycles, 1000))
    args.seconds = max(1, min(args.seconds, 600))
    if args.role == "client":
        client_main(args)
    elif args.role == "reference":
        reference_main(args)
    else:
        asyncio.run(server_main(args))


if __name__ == "__main__":
    main()
