"""Gateway mode benchmark (run by hand; prints figures, passes or fails nothing).

    .venv/bin/python -m bench.upstream_sync [--messages 10000] [--engine sqlite|postgresql]
        [--pairs 1] [--notices 200]

1. First sync: a private Debian Dovecot (tests/upstream/dovecot.py) holds a box of
   `--messages` messages of 1-64 KiB (seeded, most small: about 35 MB for 10,000), written into its
   Maildir and indexed by Dovecot once before anything is timed. Then, in the same run
   and alternating the order every pair: mss-relay's down-sync
   (`relay.upstream.sync.BoxSync.sync_folders` over one authenticated session, into a
   fresh store: every message sealed, analysed and mapped) and Debian's `mbsync`
   pulling the same INBOX into an empty Maildir over IMAPS. Messages/s, MB/s, and the
   ratio mss-relay / mbsync (higher is better).
2. Notice delay: a gateway daemon (tests.harness) mirrors the box; a co-holder is in
   IDLE on mss-relay; `--notices` times, a message is APPENDed at Dovecot (imaplib, as
   the operator's delivery would) and the time until the co-holder's `* n EXISTS` is
   taken. Each APPEND waits for the engine to be back in IDLE on the operator (a
   delivery every few seconds, not a burst). p50 / p99 / max.

Everything is bounded: message counts, socket and command timeouts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from relay.config.model import StorageConfig, TlsMode
from relay.logsetup import setup_logging
from relay.store.crypto import create_key_file
from relay.store.mirror import MirrorStore
from relay.store.store import Store
from relay.tls.pki import DevPki, generate_dev_pki
from relay.upstream.connection import open_session
from relay.upstream.sync import BoxSync
from tests.conftest import PG_URL, _asyncpg_dsn
from tests.harness import start_daemon
from tests.imap.support import Raw
from tests.upstream.conftest import BOX_LOGIN, BOX_PASSWORD, password_file, upstream_config
from tests.upstream.dovecot import Dovecot
from tests.upstream.test_sync import INBOX, OP_BOX, hosted_box

MBSYNC = shutil.which("mbsync")


def make_messages(n: int, seed: int = 12) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        # 1-64 KiB, most of them small (mean about 3.6 KB): about 35 MB for 10,000
        # messages, the box issue 12 describes
        size = min(64 * 1024, 1024 + int(rng.expovariate(1 / 2600)))
        head = (
            f"From: dr.x{i % 50}@peer.mssante.fr\r\nTo: {OP_BOX}\r\n"
            f"Subject: Compte rendu {i}\r\nMessage-ID: <bench-{i}-{seed}@peer.mssante.fr>\r\n"
            f"Date: Wed, 02 Dec 2026 08:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        ).encode()
        line = b"Bonjour, voici le compte rendu de consultation du patient. " * 2 + b"\r\n"
        body = (line * (size // len(line) + 1))[: max(size - len(head), 0)]
        out.append(head + body)
    return out


async def _fresh_storage(engine: str, work: Path) -> tuple[StorageConfig, str | None]:
    key_file = work / "blob.key"
    if not key_file.exists():
        create_key_file(key_file)
        create_key_file(work / "audit.key")
    if engine == "sqlite":
        db = work / f"relay-{secrets.token_hex(4)}.db"
        return StorageConfig(url=f"sqlite+aiosqlite:///{db}", key_file=key_file), None
    schema = f"b_{secrets.token_hex(6)}"
    return StorageConfig(url=PG_URL, key_file=key_file, schema=schema), schema


async def _drop(schema: str | None) -> None:
    if schema is None:
        return
    conn = await asyncpg.connect(_asyncpg_dsn(PG_URL))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def relay_first_sync(server: Dovecot, pki: DevPki, engine: str, work: Path) -> float:
    storage, schema = await _fresh_storage(engine, work)
    store = await Store.open(storage)
    try:
        await store.ensure_mailboxes([OP_BOX])
        await MirrorStore(store).ensure_boxes([OP_BOX])
        up = upstream_config(
            server, pki, password=password_file(work, BOX_PASSWORD), tls=TlsMode.IMPLICIT
        )
        sync = BoxSync(store, OP_BOX, lambda: up, replay=False)
        session = await open_session(OP_BOX, up)
        try:
            caps = session.capabilities
            started = time.perf_counter()
            await sync.sync_folders(session, up, condstore="CONDSTORE" in caps)
            return time.perf_counter() - started
        finally:
            await session.logout()
    finally:
        await store.close()
        await _drop(schema)


def mbsync_first_sync(server: Dovecot, pki: DevPki, work: Path) -> float:
    assert MBSYNC is not None
    run = work / f"mbsync-{secrets.token_hex(4)}"
    maildir = run / "Maildir"
    maildir.mkdir(parents=True)
    rc = run / "mbsyncrc"
    rc.write_text(
        f"""
IMAPAccount op
Host localhost
Port {server.imaps_port}
User {BOX_LOGIN}
Pass {BOX_PASSWORD}
SSLType IMAPS
CertificateFile {pki.ca_bundle}
SystemCertificates no
AuthMechs PLAIN

IMAPStore far
Account op

MaildirStore near
Path {maildir}/
Inbox {maildir}/INBOX

Channel box
Far :far:INBOX
Near :near:INBOX
Create Near
Expunge None
Sync Pull
SyncState *
"""
    )
    started = time.perf_counter()
    done = subprocess.run(
        [MBSYNC, "-c", str(rc), "box"], capture_output=True, text=True, timeout=1800, check=False
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"mbsync failed: {done.stderr[-500:]}")
    got = len(list((maildir / "INBOX" / "new").iterdir())) + len(
        list((maildir / "INBOX" / "cur").iterdir())
    )
    shutil.rmtree(run, ignore_errors=True)
    print(f"    (mbsync wrote {got} files)")
    return elapsed


async def notice_delays(
    server: Dovecot, pki: DevPki, engine: str, work: Path, n: int
) -> list[float]:
    storage, schema = await _fresh_storage(engine, work)
    pw = password_file(work, BOX_PASSWORD)
    (work / "gw").mkdir(exist_ok=True)
    d = await start_daemon(
        work / "gw", pki, storage, extra=hosted_box(server.imaps_port, pw, pki.ca_bundle, poll=60)
    )
    delays: list[float] = []
    try:
        assert d.daemon.upstream is not None
        sync = d.daemon.upstream.boxes[OP_BOX]
        await sync.wait_rounds(1, 1800)
        watcher = await asyncio.to_thread(Raw, d)
        try:
            await asyncio.to_thread(watcher.login, "dupont")
            untagged, final = await asyncio.to_thread(watcher.command, "s", f"SELECT {INBOX}")
            assert final.startswith(b"s OK"), final
            exists = next(int(x.split()[1]) for x in untagged if x.endswith(b" EXISTS"))
            await asyncio.to_thread(watcher.send, b"i IDLE")
            assert (await asyncio.to_thread(watcher.line)).startswith(b"+ ")
            msg = make_messages(1, seed=99)[0]
            with server.imap(BOX_LOGIN) as op:
                for i in range(n):
                    await asyncio.wait_for(sync.idling.wait(), 30)
                    started = time.perf_counter()
                    await asyncio.to_thread(op.append, "INBOX", None, None, msg)
                    exists += 1
                    await asyncio.to_thread(watcher.until, f"* {exists} EXISTS".encode(), 30.0)
                    delays.append(time.perf_counter() - started)
                    if (i + 1) % 50 == 0:
                        print(f"    {i + 1} notices")
        finally:
            watcher.close()
    finally:
        await d.daemon.stop("bench finished", grace_seconds=1.0)
        await _drop(schema)
    return delays


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main_async(args: argparse.Namespace) -> int:
    if MBSYNC is None:
        print("mbsync (isync) is not installed: apt-get install isync", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-upstream-"))
    pki = generate_dev_pki(work / "pki", "localhost")
    server = Dovecot(pki, {BOX_LOGIN: BOX_PASSWORD})
    server.start()
    try:
        messages = make_messages(args.messages)
        total = sum(len(m) for m in messages)
        print(
            f"box: {len(messages)} messages, {total / 1e6:.1f} MB (1-64 KiB), engine {args.engine}"
        )
        server.seed(BOX_LOGIN, messages)
        ratios = []
        for pair in range(args.pairs):
            order = ["relay", "mbsync"] if pair % 2 == 0 else ["mbsync", "relay"]
            times: dict[str, float] = {}
            for who in order:
                if who == "relay":
                    times[who] = await relay_first_sync(server, pki, args.engine, work)
                else:
                    times[who] = await asyncio.to_thread(mbsync_first_sync, server, pki, work)
                t = times[who]
                print(
                    f"  pair {pair + 1} {who:7} {t:7.2f} s  {len(messages) / t:8.0f} msg/s  "
                    f"{total / 1e6 / t:6.1f} MB/s  load {os.getloadavg()[0]:.2f}"
                )
            ratios.append(times["mbsync"] / times["relay"])
            print(f"  pair {pair + 1} ratio mss-relay/mbsync (rate) {ratios[-1]:.2f}")
        print(f"first sync: median ratio mss-relay/mbsync {statistics.median(ratios):.2f}")
        if args.notices:
            delays = await notice_delays(server, pki, args.engine, work, args.notices)
            print(
                f"operator delivery -> co-holder IDLE notice over {len(delays)}: "
                f"p50 {_pct(delays, 50) * 1000:.0f} ms  p99 {_pct(delays, 99) * 1000:.0f} ms  "
                f"max {max(delays) * 1000:.0f} ms"
            )
    finally:
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=10000)
    p.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--pairs", type=int, default=1)
    p.add_argument("--notices", type=int, default=200)
    args = p.parse_args()
    if (
        not 1 <= args.messages <= 100_000
        or not 1 <= args.pairs <= 10
        or not 0 <= args.notices <= 2000
    ):
        p.error("--messages 1..100000, --pairs 1..10, --notices 0..2000")
    setup_logging("console", level=40)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
