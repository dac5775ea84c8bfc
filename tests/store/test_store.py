"""The store on both engines: acceptance, group commit, encryption at rest, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
import threading
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.audit.events import MessageAccepted
from relay.config.model import StorageConfig
from relay.errors import StoreError
from relay.store.crypto import BlobCipher
from relay.store.store import Acceptance, Store, TxContext, check_durability_settings

BOX = "secretariat@cpts-demo.mssante.fr"
PER = "martin@cpts-demo.mssante.fr"
SECRET = "Compte-rendu confidentiel: glycemie 3,2 g/L patient 279035121518989"


def message(n: int = 0, body: str = SECRET) -> bytes:
    return (
        f"From: Dr Martin <{PER}>\r\n"
        f"To: <{BOX}>\r\n"
        f"Subject: Resultat {n} {body}\r\n"
        f"Message-ID: <m{n}@cpts-demo.mssante.fr>\r\n"
        "X-MSS-INS: O\r\n"
        "\r\n"
        f"{body}\r\n"
    ).encode()


def acceptance(
    n: int = 0, *, local: tuple[str, ...] = (BOX,), remote: tuple[str, ...] = ()
) -> Acceptance:
    raw = message(n)
    return Acceptance(
        raw=raw,
        meta={"subject": f"Resultat {n} {SECRET}"},
        sender=PER,
        local_recipients=local,
        remote_recipients=remote,
        message_id=f"<m{n}@cpts-demo.mssante.fr>",
        person="martin",
        box=PER,
        audit=lambda qid: MessageAccepted(
            person="martin",
            box=PER,
            protocol="smtp",
            message_id=f"<m{n}@cpts-demo.mssante.fr>",
            sender=PER,
            recipients=local + remote,
            size_bytes=len(raw),
            queue_id=qid,
        ),
    )


async def test_a_big_message_is_stored_whole_and_its_buffer_released(store: Store) -> None:
    """Above LARGE_BLOB_BYTES the message is sealed as its row is written, a chunk at
    a time, and the caller's bytearray emptied once committed (memory: bench.compare
    bigmsg); the stored message is the same bytes, on both engines, local and queued
    alike."""
    from dataclasses import replace

    from relay.store.fastsql import LARGE_BLOB_BYTES

    body = message(7) + b"Lorem ipsum dolor sit amet.\r\n" * (LARGE_BLOB_BYTES // 29 + 10)
    buffer = bytearray(body)
    a = replace(acceptance(7, remote=("dr.x@chu-exemple.mssante.fr",)), raw=buffer)
    result = await store.accept(a)
    assert buffer == b""  # handed over and released once sealed
    [stored] = await store.messages(BOX)
    assert stored.raw == body and stored.size == len(body)
    assert stored.meta == a.meta  # PostgreSQL: the row went in by COPY, text format
    [queued] = await store.queue_rows()
    assert await store.read_blob(queued["blob_id"]) == body
    assert result.queued == 1
    created = await store.sql_scalar(
        "SELECT created_at FROM blobs WHERE id = :id", {"id": result.blob_id}
    )
    # the instant the row was written, like the queue row's (SQLite: text, naive)
    assert abs(_utc(created) - _utc(queued["created_at"])) < dt.timedelta(seconds=1)


def _utc(value: dt.datetime | str) -> dt.datetime:
    value = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


async def test_accept_delivers_locally_queues_remote_and_audits(store: Store) -> None:
    result = await store.accept(
        acceptance(1, local=(BOX, PER), remote=("dr.x@chu-exemple.mssante.fr",))
    )
    assert [d.box for d in result.deliveries] == [BOX, PER]
    assert result.queued == 1

    inbox = await store.messages(BOX)
    assert len(inbox) == 1
    assert inbox[0].raw == message(1)
    assert inbox[0].uid == 1
    assert inbox[0].meta == {"subject": f"Resultat 1 {SECRET}"}
    assert (await store.messages(PER))[0].raw == message(1)

    queue = await store.queue_rows()
    assert [(q["recipient"], q["status"], q["queue_id"]) for q in queue] == [
        ("dr.x@chu-exemple.mssante.fr", "queued", result.queue_id)
    ]
    rows = await store.audit_rows()
    assert [r.action for r in rows] == ["message.accepted"]
    assert result.queue_id in rows[0].data
    assert SECRET not in rows[0].data  # the audit never holds content
    assert str(await store.verify_audit()).startswith("OK")


async def test_uids_are_strictly_increasing_per_folder(store: Store) -> None:
    for n in range(5):
        await store.accept(acceptance(n))
    uids = [m.uid for m in await store.messages(BOX)]
    assert uids == [1, 2, 3, 4, 5]
    modseqs = [m.modseq for m in await store.messages(BOX)]
    assert modseqs == sorted(modseqs) and len(set(modseqs)) == 5


async def test_concurrent_acceptances_share_commits(store: Store) -> None:
    before = store.commits
    results = await asyncio.gather(*(store.accept(acceptance(n)) for n in range(60)))
    commits = store.commits - before
    assert len({r.queue_id for r in results}) == 60
    assert commits < 60, f"60 acceptances took {commits} commits: no group commit"
    msgs = await store.messages(BOX)
    assert sorted(m.uid for m in msgs) == list(range(1, 61))
    assert (await store.verify_audit()).ok
    seq, _ = await store.audit_head()
    assert seq == 60


@pytest.mark.parametrize("weight", [None, 0])  # SQLite: in the writer's thread / on the loop
async def test_a_failing_unit_does_not_sink_its_batch(store: Store, weight: int | None) -> None:
    async def boom(conn: AsyncConnection, ctx: TxContext) -> None:
        await conn.exec_driver_sql("INSERT INTO mailboxes (id) VALUES (NULL)")  # NOT NULL

    outcomes = await asyncio.gather(
        store.accept(acceptance(1)),
        store.transact(boom, weight=weight),
        store.accept(acceptance(2)),
        return_exceptions=True,
    )
    assert not isinstance(outcomes[0], BaseException)
    assert isinstance(outcomes[1], Exception)
    assert not isinstance(outcomes[2], BaseException)
    assert [m.uid for m in await store.messages(BOX)] == [1, 2]
    assert [r.action for r in await store.audit_rows()] == ["message.accepted"] * 2


@pytest.mark.parametrize("engine_name", ["sqlite"])  # PostgreSQL: always on the loop
async def test_sqlite_runs_small_batches_on_the_loop_and_the_rest_in_the_writer_thread(
    store: Store,
) -> None:
    """A batch whose units all say what they write, and little, runs its statements on
    the event loop's thread (its COMMIT still in the writer's); a unit of unknown or
    big weight takes its whole batch to the writer's thread."""
    from relay.store.store import LOOP_BATCH_BYTES

    here = threading.current_thread()
    release = threading.Event()
    seen: dict[str, threading.Thread] = {}

    def unit(name: str, *, block: bool = False) -> Any:
        async def run(conn: AsyncConnection, ctx: TxContext) -> None:
            seen[name] = threading.current_thread()
            if block:  # holds the writer (in its thread) until the rest is queued
                assert release.wait(10)
            await conn.exec_driver_sql("SELECT 1")
            ctx.audit(_bare_event(name))

        return run

    first = asyncio.ensure_future(store.transact(unit("first", block=True)))
    await asyncio.sleep(0.05)  # the writer is in `first`: the next two are one batch
    small_with_unknown = asyncio.gather(
        store.transact(
            unit(
                "small",
            ),
            weight=10,
        ),
        store.transact(unit("unknown")),
    )
    await asyncio.sleep(0.05)
    release.set()
    await first
    await small_with_unknown
    await store.transact(unit("alone small"), weight=10)
    await store.transact(unit("alone big"), weight=LOOP_BATCH_BYTES + 1)
    await store.accept(acceptance(1))

    assert seen["first"] is not here and seen["unknown"] is not here
    assert seen["small"] is seen["unknown"], "one batch, one thread"
    assert seen["alone small"] is here
    assert seen["alone big"] is not here
    assert [m.uid for m in await store.messages(BOX)] == [1]
    actions = [r.action for r in await store.audit_rows()]
    assert actions == ["message.accepted"] * 6
    assert (await store.verify_audit()).ok


async def test_a_big_message_written_twice_when_its_batch_is_run_again(store: Store) -> None:
    """A big message is sealed as its row is written: when another acceptance of its
    batch fails in the batch's INSERTs (a queue row without its sender), the batch is
    rolled back and run again unit by unit, and the big one is sealed and written a
    second time from the plaintext it still holds; it reads back whole."""
    from dataclasses import replace

    from relay.store.fastsql import LARGE_BLOB_BYTES

    body = message(7) + b"Lorem ipsum dolor sit amet.\r\n" * (2 * LARGE_BLOB_BYTES // 29)
    buffer = bytearray(body)
    big = replace(acceptance(7), raw=buffer)
    # queue.sender is NOT NULL: this one fails in the batch's INSERTs, after the blobs
    bad = replace(acceptance(8, remote=("dr.x@chu-exemple.mssante.fr",)), sender=cast(str, None))
    outcomes = await asyncio.gather(store.accept(big), store.accept(bad), return_exceptions=True)
    assert not isinstance(outcomes[0], BaseException)
    assert isinstance(outcomes[1], Exception)
    assert buffer == b""
    [stored] = await store.messages(BOX)
    assert stored.raw == body and stored.size == len(body)


def _bare_event(queue_id: str) -> MessageAccepted:
    """An audit event that touches no folder."""
    return MessageAccepted(
        protocol="test", message_id=None, sender="", recipients=(), size_bytes=0, queue_id=queue_id
    )


@pytest.mark.parametrize("engine_name", ["postgresql"])  # SQLite: one node, in process
async def test_a_second_node_hears_what_each_commit_touched(
    store: Store, storage: StorageConfig
) -> None:
    """PostgreSQL: the folders a batch touched reach the other nodes' LISTEN with its
    commit (their IMAP sessions look for changes then), in the batch's last statement;
    a batch that touches no folder sends nothing, and a node does not hear itself."""
    other = await Store.open(storage)  # a second node on the same database
    heard: asyncio.Queue[frozenset[int]] = asyncio.Queue()
    mine: list[frozenset[int]] = []
    other.on_commit(heard.put_nowait)
    try:
        result = await store.accept(acceptance(1))
        got = await asyncio.wait_for(heard.get(), 10)
        assert got == frozenset(d.folder_id for d in result.deliveries)
        store.on_commit(mine.append)
        # Two boxes, in one batch or two: every folder is named.
        both = await asyncio.gather(
            store.accept(acceptance(2)), store.accept(acceptance(3, local=(PER,)))
        )
        folders = {d.folder_id for r in both for d in r.deliveries}
        seen: set[int] = set()
        while seen != folders:
            seen |= await asyncio.wait_for(heard.get(), 10)
        # An audit event alone touches no folder: nothing is sent for it.
        await store.record(_bare_event("q"))
        await other.record(_bare_event("r"))
        await asyncio.sleep(0.3)
        assert heard.empty()
        # In process, once each: the node does not also hear its own NOTIFY.
        assert sorted(f for touched in mine for f in touched) == sorted(folders)
        assert (await store.verify_audit()).ok
    finally:
        await other.close()


async def test_a_read_is_one_snapshot(store: Store, storage: StorageConfig) -> None:
    """`Store.read` promises one consistent view: a commit made by another connection
    between two statements of one read is not seen by the second (on PostgreSQL's
    default READ COMMITTED it was: each statement took a new snapshot)."""
    count = text("SELECT count(*) FROM subscriptions")
    add = "INSERT INTO subscriptions (person, mailbox, folder) VALUES ('dupont', 'b', 'f')"

    async def read(conn: AsyncConnection) -> tuple[int, int]:
        first = (await conn.execute(count)).scalar_one()
        if store.dialect == "sqlite":  # a reader thread: another connection, synchronously
            path = storage.url.removeprefix("sqlite+aiosqlite:///")
            with contextlib.closing(sqlite3.connect(path, timeout=10)) as other:
                other.execute(add)
                other.commit()
        else:
            other = await asyncpg.connect(
                storage.url.replace("postgresql+asyncpg://", "postgresql://"),
                server_settings={"search_path": storage.schema or "public"},
            )
            try:
                await other.execute(add)  # committed: asyncpg's autocommit
            finally:
                await other.close()
        second = (await conn.execute(count)).scalar_one()
        return int(first), int(second)

    assert await store.read(read) == (0, 0)

    async def after(conn: AsyncConnection) -> int:
        return int((await conn.execute(count)).scalar_one())

    assert await store.read(after) == 1  # the commit was made, and is seen by the next read


async def test_messages_survive_reopen(storage: StorageConfig) -> None:
    s = await Store.open(storage)
    await s.ensure_mailboxes([BOX])
    await s.accept(acceptance(7))
    await s.close()
    s2 = await Store.open(storage)  # migrations again: idempotent
    try:
        await s2.ensure_mailboxes([BOX])
        msgs = await s2.messages(BOX)
        assert [m.raw for m in msgs] == [message(7)]
        await s2.accept(acceptance(8))
        assert [m.uid for m in await s2.messages(BOX)] == [1, 2]
    finally:
        await s2.close()


async def test_a_store_that_cannot_open_leaves_no_driver_thread_behind(tmp_path: Path) -> None:
    """A failed SQLite open raises only once the driver's worker thread has ended: a
    CLI command that fails fast closes its loop next, and a thread still running then
    would print its own traceback under the command's one-line error."""
    absent = tmp_path / "never" / "relay.db"
    storage = StorageConfig(url=f"sqlite+aiosqlite:///{absent}", key_file=tmp_path / "k")
    before = set(threading.enumerate())
    with pytest.raises(StoreError, match="serve creates it"):
        await Store.open(storage)
    started = set(threading.enumerate()) - before
    # asyncio_N: the loop's own executor, which stays for the next to_thread
    left = [t for t in started if t.is_alive() and not t.name.startswith("asyncio_")]
    assert left == []


async def test_durability_settings_are_full(store: Store) -> None:
    settings = await check_durability_settings(store)
    if store.dialect == "sqlite":
        assert settings == {"journal_mode": "wal", "synchronous": 2}  # 2 = FULL
    else:
        assert settings == {"fsync": "on", "synchronous_commit": "on"}


async def test_database_never_holds_plaintext(store: Store, storage: StorageConfig) -> None:
    await store.accept(acceptance(3, local=(BOX, PER), remote=("x@chu-exemple.mssante.fr",)))
    needle = b"glycemie 3,2 g/L"
    if store.dialect == "sqlite":
        db_path = Path(storage.url.removeprefix("sqlite+aiosqlite:///"))
        on_disk = b"".join(
            p.read_bytes() for p in db_path.parent.glob(db_path.name + "*") if p.is_file()
        )
        assert b"Message-ID" not in on_disk or needle not in on_disk
        assert needle not in on_disk
        assert b"m3@cpts-demo.mssante.fr" in on_disk  # the identifier is there: we looked
    else:
        dump = await store.sql_scalar(
            "SELECT string_agg(encode(data, 'escape') || encode(meta, 'escape'), '') FROM blobs"
        )
        assert isinstance(dump, str)
        assert needle.decode() not in dump
        texts = await store.sql_scalar(
            "SELECT string_agg(coalesce(message_id,'') || flags, '') FROM messages"
        )
        assert needle.decode() not in texts
    assert (await store.messages(BOX))[0].raw == message(3)


async def test_blob_moved_to_another_row_does_not_decrypt(store: Store) -> None:
    a = await store.accept(acceptance(1))
    b = await store.accept(acceptance(2))
    await store.execute_admin(
        "UPDATE blobs SET data = (SELECT data FROM blobs WHERE id = :a) WHERE id = :b",
        {"a": a.blob_id, "b": b.blob_id},
    )
    with pytest.raises(StoreError, match="cannot be decrypted"):
        await store.read_blob(b.blob_id)
    assert await store.read_blob(a.blob_id) == message(1)


def test_wrong_key_cannot_open() -> None:
    sealed = BlobCipher(b"k" * 32).seal("id1", b"hello")
    assert b"hello" not in sealed
    assert BlobCipher(b"k" * 32).open("id1", sealed) == b"hello"
    with pytest.raises(StoreError):
        BlobCipher(b"j" * 32).open("id1", sealed)
