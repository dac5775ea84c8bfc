"""Outbound delivery load: deliveries/s from the queue to a local sink over mutual TLS,
with connection reuse and without it (one connection per message).

Everything on 127.0.0.1: a store (SQLite file or a PostgreSQL schema) and the delivery
worker with its real TLS client context (test PKI, CRLs checked) in this process, and a
sink MTA (aiosmtpd, in a child process) that requires STARTTLS and our client
certificate and answers 250.
The queue is filled through `Store.accept` (as SMTP acceptance does), then the worker
runs rounds until the queue is empty. Each outcome is committed with its audit event
before the next message. Bounded: --messages and --max-seconds. Prints figures; it
asserts nothing.

    .venv/bin/python -m bench.delivery_load --engine sqlite --messages 1000
    .venv/bin/python -m bench.delivery_load --engine postgresql --messages 1000 \
        --concurrency 4 --size 10240
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from aiosmtpd.smtp import SMTP, Envelope, Session

from relay.audit.events import AuditEvent, MessageAccepted, TrustSpaceImported
from relay.config import load
from relay.delivery.crl import CrlRefresher
from relay.delivery.worker import DeliveryWorker
from relay.logsetup import setup_logging
from relay.runtime import Runtime
from relay.store.queue import QueueStore
from relay.store.store import Acceptance, Store, TrustEntry
from relay.tls.pki import DevPki, generate_dev_pki

PG_URL = os.environ.get(
    "RELAY_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
SENDER = "martin@bench.mssante.fr"
SINK_DOMAIN = "sink.mssante.fr"
MAX_MESSAGES = 50_000


class Sink:
    """A peer MTA that accepts everything over mutual TLS and counts."""

    def __init__(self) -> None:
        self.messages = 0
        self.recipients = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages += 1
        self.recipients += len(envelope.rcpt_tos)
        return "250 2.0.0 OK"


class SinkProcess:
    """The sink in a child process (this script with --sink), so that it does not
    share the worker's event loop or interpreter lock. It prints its port, serves until
    its stdin closes, then prints what it received."""

    def __init__(self, pki_dir: Path) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.delivery_load", "--sink", str(pki_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("port "):
            self._proc.kill()
            raise RuntimeError(f"sink did not start: {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> str:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.close()
        report = self._proc.stdout.read().strip()
        self._proc.wait(10)
        return report


async def serve_sink(pki_dir: Path) -> None:
    sink = Sink()
    peer_cert, peer_key = pki_dir / "peer.pem", pki_dir / "peer.key"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(peer_cert, peer_key)
    ctx.load_verify_locations(cafile=pki_dir / "ca-bundle.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the worker must show its certificate
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(sink, tls_context=ctx, require_starttls=True, loop=loop),
        host="127.0.0.1",
        port=0,
    )
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes it
    server.close()
    print(f"sink received {sink.messages} messages, {sink.recipients} recipients", flush=True)


def write_config(folder: Path, pki: DevPki, storage: str, sink_port: int, concurrency: int) -> Path:
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

[[people]]
id = "martin"
display_name = "Bench"

[[mailboxes]]
address = "{SENDER}"
type = "PER"
owner = "martin"

[[routes]]
domain = "{SINK_DOMAIN}"
host = "localhost"
port = {sink_port}

[limits]
delivery_concurrency = {concurrency}
"""
    path = folder / "relay.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _event(queue_id: str) -> AuditEvent:
    return MessageAccepted(
        protocol="bench",
        message_id=None,
        sender=SENDER,
        recipients=(),
        size_bytes=0,
        queue_id=queue_id,
    )


async def fill(store: Store, messages: int, rcpts: int, size: int) -> None:
    body = ("x" * 76 + "\r\n") * max(1, size // 78)

    async def one(n: int) -> None:
        raw = (
            f"From: <{SENDER}>\r\nTo: <r0@{SINK_DOMAIN}>\r\nSubject: bench {n}\r\n"
            f"Message-ID: <bench-{n}-{secrets.token_hex(4)}@bench>\r\n\r\n{body}"
        ).encode()
        await store.accept(
            Acceptance(
                raw=raw,
                meta={},
                sender=SENDER,
                local_recipients=(),
                remote_recipients=tuple(f"r{i}@{SINK_DOMAIN}" for i in range(rcpts)),
                message_id=None,
                audit=_event,
            )
        )

    for start in range(0, messages, 200):  # 200 acceptances share group commits
        await asyncio.gather(*(one(n) for n in range(start, min(messages, start + 200))))


async def delivered_count(store: Store) -> int:
    """Recipients the worker recorded as delivered (outcome and audit event, committed)."""
    value = await store.sql_scalar("SELECT count(*) FROM audit WHERE action = 'delivery.delivered'")
    return int(value)


async def drain(worker: DeliveryWorker, queue: QueueStore, deadline: float) -> bool:
    while time.monotonic() < deadline:
        handled = await worker.run_once()
        if not handled and not await queue.pending():
            return True
    return False


async def run(args: argparse.Namespace) -> int:
    folder = Path(tempfile.mkdtemp(prefix="mss-relay-bench-delivery-"))
    pki = generate_dev_pki(folder / "pki", "localhost")
    schema: str | None = None
    if args.engine == "sqlite":
        storage = f'url = "sqlite+aiosqlite:///{folder}/relay.db"'
    else:
        schema = f"bench_{secrets.token_hex(4)}"
        storage = f'url = "{PG_URL}"\nschema = "{schema}"'
    sink = SinkProcess(pki.directory)
    port = sink.port
    config = load(write_config(folder, pki, storage, port, args.concurrency))
    store = await Store.open(config.storage, may_create_keys=True)
    try:
        await store.trust_space_replace(
            [TrustEntry(SINK_DOMAIN, SINK_DOMAIN, pki.subjects["peer"], None, None)],
            TrustSpaceImported(source="bench", domains=1, generated=None),
        )
        runtime = Runtime(config=config, store=store)
        refresher = CrlRefresher(runtime, list)
        await refresher.refresh(fetch=False, initial=True)
        worker = DeliveryWorker(runtime, refresher)
        queue = QueueStore(store)
        print(
            f"engine {args.engine}; {args.messages} messages x {args.recipients} recipient(s), "
            f"{args.size} bytes; {args.concurrency} connections at once; "
            "mutual TLS (client certificate required, CRLs checked)"
        )
        for label, per_connection in (("reuse", 100), ("no reuse", 1)):
            limits = dataclasses.replace(
                config.limits, delivery_messages_per_connection=per_connection
            )
            runtime.config = dataclasses.replace(config, limits=limits)
            await fill(store, args.messages, args.recipients, args.size)
            before_msgs, before_conns = await delivered_count(store), worker.connections_opened
            started = time.monotonic()
            done = await drain(worker, queue, started + args.max_seconds)
            elapsed = time.monotonic() - started
            delivered = await delivered_count(store) - before_msgs
            conns = worker.connections_opened - before_conns
            rate = delivered / args.recipients / elapsed if elapsed else 0.0
            print(
                f"{label:>9}: {delivered // args.recipients} messages ({delivered} recipients) in "
                f"{elapsed:.2f} s = {rate:.0f} messages/s, "
                f"{rate * args.recipients:.0f} deliveries/s; {conns} connections"
                + ("" if done else f" (STOPPED at --max-seconds {args.max_seconds})")
            )
    finally:
        await store.close()
        print(sink.stop())
        shutil.rmtree(folder, ignore_errors=True)
        if schema is not None:
            conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg://", "postgresql://"))
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--recipients", type=int, default=1, help="recipients per message")
    p.add_argument("--size", type=int, default=4096, help="approximate message size, bytes")
    p.add_argument("--concurrency", type=int, default=4, help="connections at once")
    p.add_argument("--max-seconds", type=float, default=300.0, help="per run")
    p.add_argument("--sink", type=Path, help=argparse.SUPPRESS)  # child process mode
    args = p.parse_args(argv)
    if args.sink is not None:
        logging.getLogger("mail.log").setLevel(logging.ERROR)
        asyncio.run(serve_sink(args.sink))
        return 0
    if not 1 <= args.messages <= MAX_MESSAGES:
        p.error(f"--messages must be between 1 and {MAX_MESSAGES}")
    if not 1 <= args.recipients <= 100:
        p.error("--recipients must be between 1 and 100")
    setup_logging("console", level=logging.WARNING)  # figures on stdout, problems on stderr
    # aiosmtpd warns at every connection that the sink requires client certificates
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    result: int = asyncio.run(run(args))
    return result


if __name__ == "__main__":
    sys.exit(main())
