"""Store acceptance without SMTP: accepts/s and group commits, both engines.

    .venv/bin/python -m bench.store_load --engine sqlite --messages 1000 --concurrency 10

Bounded in count; 127.0.0.1 only (PostgreSQL); prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
from pathlib import Path

import asyncpg

from relay.audit.events import MessageAccepted
from relay.config.model import StorageConfig
from relay.logsetup import setup_logging
from relay.store.store import Acceptance, Store

BOX = "secretariat@bench.mssante.fr"
PG_URL = os.environ.get(
    "RELAY_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def acceptance(n: int, size: int) -> Acceptance:
    raw = (f"Subject: {n}\r\n\r\n" + "x" * 70 + "\r\n").encode() * max(1, size // 90)
    return Acceptance(
        raw=raw,
        meta={"n": n},
        sender="martin@bench.mssante.fr",
        local_recipients=(BOX,),
        remote_recipients=(),
        message_id=f"bench-{n}@bench",
        audit=lambda qid: MessageAccepted(
            protocol="bench",
            message_id=None,
            sender="martin@bench.mssante.fr",
            recipients=(BOX,),
            size_bytes=len(raw),
            queue_id=qid,
        ),
    )


async def run(engine: str, messages: int, concurrency: int, size: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="mss-store-bench-"))
    schema = f"bench_{secrets.token_hex(4)}"
    if engine == "sqlite":
        storage = StorageConfig(url=f"sqlite+aiosqlite:///{folder}/r.db", key_file=folder / "k")
    else:
        storage = StorageConfig(url=PG_URL, key_file=folder / "k", schema=schema)
    store = await Store.open(storage, may_create_keys=True)
    try:
        await store.ensure_mailboxes([BOX])
        gate = asyncio.Semaphore(concurrency)

        async def one(n: int) -> None:
            async with gate:
                await store.accept(acceptance(n, size))

        commits = store.commits
        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(messages)))
        elapsed = time.perf_counter() - started
        print(
            f"engine={engine} accepts={messages} concurrency={concurrency} size={size} B: "
            f"{messages / elapsed:.0f} accepts/s, {store.commits - commits} commits"
        )
    finally:
        await store.close()
        if engine == "postgresql":
            conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg://", "postgresql://"))
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--size", type=int, default=10240)
    args = p.parse_args()
    setup_logging("json", level=40)  # no per-event audit lines on the console
    asyncio.run(run(args.engine, args.messages, args.concurrency, args.size))


if __name__ == "__main__":
    main()
