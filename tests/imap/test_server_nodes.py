"""Two daemons on one PostgreSQL (DESIGN.md, scale-out): a change made through one node
reaches IDLE sessions on the other, through LISTEN/NOTIFY. PostgreSQL only: SQLite is
one node by design."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.config.model import StorageConfig
from relay.tls.pki import DevPki
from tests.conftest import PG_URL, _drop_schema
from tests.harness import SHARED, RunningDaemon, start_daemon
from tests.imap.support import Raw, deliver, letter, login, ok, shared

INBOX = shared(SHARED)


@pytest.fixture
async def two_nodes(
    tmp_path: Path, dev_pki: DevPki
) -> AsyncIterator[tuple[RunningDaemon, RunningDaemon]]:
    schema = f"t_{secrets.token_hex(6)}"
    storage = StorageConfig(url=PG_URL, key_file=tmp_path / "blob.key", schema=schema)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = await start_daemon(tmp_path / "a", dev_pki, storage)
    b = await start_daemon(tmp_path / "b", dev_pki, storage)
    try:
        yield a, b
    finally:
        await b.daemon.stop("test finished", grace_seconds=1.0)
        await a.daemon.stop("test finished", grace_seconds=1.0)
        await _drop_schema(schema)


async def test_idle_on_one_node_sees_changes_made_on_the_other(
    two_nodes: tuple[RunningDaemon, RunningDaemon],
) -> None:
    a, b = two_nodes
    assert a.store.node_id != b.store.node_id
    await deliver(a.store, SHARED, [letter(1)])
    watcher = await asyncio.to_thread(Raw, a)
    await asyncio.to_thread(watcher.login, "dupont")
    untagged, final = await asyncio.to_thread(watcher.command, "s", f"SELECT {INBOX}")
    assert final.startswith(b"s OK") and b"* 1 EXISTS" in untagged
    await asyncio.to_thread(watcher.send, b"i IDLE")
    assert (await asyncio.to_thread(watcher.line)).startswith(b"+ ")

    # a new message committed by node B: node A's session hears of it
    await deliver(b.store, SHARED, [letter(2)])
    assert await asyncio.to_thread(watcher.until, b"* 2 EXISTS", 5.0)

    # a flag set through node B's IMAP server
    def martin_flags_on_b() -> None:
        m = login(b, "martin")
        ok(m.select(INBOX))
        ok(m.store("1", "+FLAGS", "(\\Flagged)"))
        m.logout()

    await asyncio.to_thread(martin_flags_on_b)
    line = await asyncio.to_thread(watcher.until, b"* 1 FETCH", 5.0)
    assert b"\\Flagged" in line
    await asyncio.to_thread(watcher.send, b"DONE")
    assert (await asyncio.to_thread(watcher.until, b"i ")).startswith(b"i OK")
    watcher.close()
