"""Message key rotation: blobs re-encrypted per second, and what a backup costs.

    .venv/bin/python -m bench.key_rotation --engine sqlite --messages 2000 --size 10240

Fills a throw-away store (no SMTP), rotates the key, re-encrypts every blob with the
given batch and pause (the daemon's defaults: 16 and 10 ms), and times a backup of the
result. Bounded in count; 127.0.0.1 only (PostgreSQL); prints figures, asserts
nothing. There is no Postfix/Dovecot counterpart: Dovecot's mail_crypt never
re-encrypts existing mail.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import asyncpg

from bench.store_load import BOX, PG_URL, acceptance
from relay.config.model import Limits, StorageConfig
from relay.logsetup import setup_logging
from relay.store.backup import backup
from relay.store.rotation import Reencryptor, rotate
from relay.store.store import Store


async def run(engine: str, messages: int, size: int, batch: int, pause_ms: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="mss-rotation-bench-"))
    schema = f"bench_{secrets.token_hex(4)}"
    if engine == "sqlite":
        storage = StorageConfig(url=f"sqlite+aiosqlite:///{folder}/r.db", key_file=folder / "k")
    else:
        storage = StorageConfig(url=PG_URL, key_file=folder / "k", schema=schema)
    limits = dataclasses.replace(
        Limits(),
        key_reencrypt_batch_blobs=batch,
        key_reencrypt_pause_ms=pause_ms,
        key_switch_grace_seconds=1,
    )
    store = await Store.open(storage, may_create_keys=True)
    try:
        await store.ensure_mailboxes([BOX])
        gate = asyncio.Semaphore(10)

        async def one(n: int) -> None:
            async with gate:
                await store.accept(acceptance(n, size))

        await asyncio.gather(*(one(n) for n in range(messages)))
        started = time.perf_counter()
        await rotate(store, storage, operator="bench")
        switched = time.perf_counter() - started
        worker = Reencryptor(store, storage, lambda: limits, by="bench")
        started = time.perf_counter()
        done = await worker.run_pass()
        elapsed = time.perf_counter() - started
        mb = done * size / 1e6
        print(
            f"engine={engine} blobs={messages} size={size} B batch={batch} pause={pause_ms} ms: "
            f"switch {switched * 1000:.0f} ms; re-encrypted {done} in {elapsed:.1f} s = "
            f"{done / elapsed:.0f} blobs/s ({mb / elapsed:.1f} MB/s)"
        )
        started = time.perf_counter()
        target = folder / "backup"
        manifest = await backup(storage, target, now=dt.datetime.now(dt.UTC))
        elapsed = time.perf_counter() - started
        total = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        print(
            f"engine={engine} backup of {manifest.audit_seq} audit rows, {total / 1e6:.1f} MB: "
            f"{elapsed:.2f} s"
        )
    finally:
        await store.close()
        shutil.rmtree(folder, ignore_errors=True)
        if engine == "postgresql":
            conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg://", "postgresql://"))
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--size", type=int, default=10240)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--pause-ms", type=int, default=10)
    args = p.parse_args()
    setup_logging("json", level=40)
    asyncio.run(run(args.engine, args.messages, args.size, args.batch, args.pause_ms))


if __name__ == "__main__":
    main()
