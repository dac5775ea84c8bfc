"""SMTP acceptance load: messages/s and latency percentiles, durable (250 after commit).

Starts a daemon (a separate process, its own bench config in a temporary folder, all
listeners on 127.0.0.1) unless --connect is given, then drives it with N concurrent
sessions that pipeline MAIL/RCPT/DATA (RFC 2920). Bounded: --messages in total and
--max-seconds wall time. Prints figures; it asserts nothing.

    .venv/bin/python -m bench.smtp_load --engine sqlite --messages 2000 --size 10240 \
        --concurrency 10 --mode plain
    .venv/bin/python -m bench.smtp_load --engine postgresql --mode starttls --auth
    .venv/bin/python -m bench.smtp_load --engine sqlite --big-message-mb 25
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

import asyncpg

PG_URL = os.environ.get(
    "RELAY_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
SENDER = "martin@bench.mssante.fr"
RECIPIENT = "secretariat@bench.mssante.fr"
PASSWORD = "bench-password"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Target:
    host: str
    port: int
    mode: str  # plain | starttls | implicit
    ca: Path | None
    auth: bool


def write_bench_config(folder: Path, engine: str, ports: dict[str, int]) -> tuple[Path, Path]:
    from relay.identity.passwords import hash_password
    from relay.tls.pki import generate_dev_pki

    pki = generate_dev_pki(folder / "pki", "localhost")
    if engine == "sqlite":
        storage = f'url = "sqlite+aiosqlite:///{folder}/relay.db"'
    else:
        schema = f"bench_{secrets.token_hex(4)}"
        storage = f'url = "{PG_URL}"\nschema = "{schema}"'
    text = f"""
[server]
hostname = "localhost"
data_dir = "{folder}/data"

[storage]
{storage}
key_file = "{folder}/blob.key"

[tls]
certificate = "{pki.server_cert}"
key = "{pki.server_key}"
trust_anchors = ["{pki.ca_bundle}"]
crl_files = ["{pki.crl}"]

# Plain text is accepted on loopback only (the loader refuses it elsewhere).
[[listeners]]
kind = "submission"
address = "127.0.0.1:{ports["plain"]}"
tls = "none"

[[listeners]]
kind = "submission"
address = "127.0.0.1:{ports["starttls"]}"
tls = "starttls"

[[people]]
id = "martin"
display_name = "Dr Bench"
rpps = "10001234567"
password_hash = "{hash_password(PASSWORD)}"

[[mailboxes]]
address = "{RECIPIENT}"
type = "ORG"
owner = "martin"
responsible = "martin"

[[mailboxes]]
address = "{SENDER}"
type = "PER"
owner = "martin"
"""
    path = folder / "bench.toml"
    path.write_text(text)
    return path, pki.ca_bundle


def make_message(size: int, n: int) -> bytes:
    head = (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: bench {n}\r\n"
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
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)


async def open_session(t: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    ctx = ssl.create_default_context(cafile=str(t.ca)) if t.ca else None
    reader, writer = await asyncio.open_connection(
        t.host, t.port, ssl=ctx if t.mode == "implicit" else None, limit=1 << 20
    )
    await read_reply(reader)
    writer.write(b"EHLO bench.example\r\n")
    await read_reply(reader)
    if t.mode == "starttls":
        writer.write(b"STARTTLS\r\n")
        await read_reply(reader)
        assert ctx is not None
        await writer.start_tls(ctx, server_hostname="localhost")
        writer.write(b"EHLO bench.example\r\n")
        await read_reply(reader)
    if t.auth:
        blob = b64encode(f"\0martin\0{PASSWORD}".encode()).decode()
        writer.write(f"AUTH PLAIN {blob}\r\n".encode())
        code, text = await read_reply(reader)
        if code != 235:
            raise RuntimeError(f"AUTH failed: {text!r}")
    return reader, writer


async def send_one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> float:
    started = time.perf_counter()
    writer.write(
        f"MAIL FROM:<{SENDER}> SIZE={len(data)}\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode()
    )
    for expected in (250, 250, 354):
        code, text = await read_reply(reader)
        if code != expected:
            raise RuntimeError(f"expected {expected}, got {text!r}")
    writer.write(dot_stuff(data))
    writer.write(b"\r\n.\r\n" if not data.endswith(b"\r\n") else b".\r\n")
    code, text = await read_reply(reader)
    if code != 250:
        raise RuntimeError(f"DATA refused: {text!r}")
    return time.perf_counter() - started


async def load(
    t: Target, messages: int, size: int, concurrency: int, max_seconds: float
) -> tuple[int, float, list[float]]:
    payloads = [make_message(size, n) for n in range(min(messages, 64))]
    counter = iter(range(messages))
    latencies: list[float] = []
    deadline = time.monotonic() + max_seconds

    async def worker() -> None:
        reader, writer = await open_session(t)
        try:
            for n in counter:
                if time.monotonic() > deadline:
                    break
                latencies.append(await send_one(reader, writer, payloads[n % len(payloads)]))
            writer.write(b"QUIT\r\n")
            await writer.drain()
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return len(latencies), elapsed, latencies


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found")


async def big_message(t: Target, pid: int, megabytes: int) -> None:
    await asyncio.sleep(0.5)
    idle = rss_kb(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
    reader, writer = await open_session(t)
    data = make_message(megabytes * 1024 * 1024, 0)
    started = time.perf_counter()
    await send_one(reader, writer, data)
    elapsed = time.perf_counter() - started
    writer.close()
    peak = rss_kb(pid, "VmHWM")
    above = (peak - idle) / 1024
    print(
        f"big message: {len(data) / 1e6:.1f} MB accepted in {elapsed:.2f} s; daemon RSS idle "
        f"{idle / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB, peak above idle {above:.0f} MiB "
        f"= {above * 1024 * 1024 / len(data):.2f}x the message"
    )


async def drop_schema(config: Path) -> None:
    text = config.read_text()
    if 'schema = "' not in text:
        return
    schema = text.split('schema = "', 1)[1].split('"', 1)[0]
    conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--connect", metavar="HOST:PORT", help="use a running daemon instead")
    p.add_argument("--ca", help="CA bundle for --connect with TLS")
    p.add_argument("--mode", choices=("plain", "starttls", "implicit"), default="plain")
    p.add_argument("--auth", action="store_true", help="AUTH PLAIN as the bench person")
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--size", type=int, default=10 * 1024, help="bytes per message")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--big-message-mb", type=int, default=0, help="also measure one big message")
    args = p.parse_args()

    proc = None
    folder = None
    if args.connect:
        host, port = args.connect.rsplit(":", 1)
        target = Target(host, int(port), args.mode, Path(args.ca) if args.ca else None, args.auth)
    else:
        folder = Path(tempfile.mkdtemp(prefix="mss-bench-"))
        ports = {"plain": free_port(), "starttls": free_port()}
        config, ca = write_bench_config(folder, args.engine, ports)
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if "mss-relay: ready" in line:
                break
        port = ports["starttls"] if args.mode == "starttls" else ports["plain"]
        # submission requires AUTH: always authenticate against our own daemon
        target = Target("127.0.0.1", port, args.mode, ca, True)
    try:
        done, elapsed, lat = asyncio.run(
            load(target, args.messages, args.size, args.concurrency, args.max_seconds)
        )
        print(
            f"engine={args.engine} mode={args.mode} auth={target.auth} messages={done} "
            f"size={args.size} B concurrency={args.concurrency}"
        )
        print(
            f"  {done / elapsed:.0f} messages/s over {elapsed:.2f} s; latency p50 "
            f"{pct(lat, 50) * 1000:.1f} ms, p99 {pct(lat, 99) * 1000:.1f} ms, "
            f"mean {statistics.fmean(lat) * 1000:.1f} ms"
        )
        if args.big_message_mb and proc is not None:
            asyncio.run(big_message(target, proc.pid, args.big_message_mb))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        if folder is not None and args.engine == "postgresql":
            asyncio.run(drop_schema(folder / "bench.toml"))


if __name__ == "__main__":
    main()
