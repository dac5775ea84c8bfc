"""A batch that PostgreSQL ends as a deadlock victim (40P01) is run again, also when
the statement that met it ran on asyncpg's own connection (relay.store.fastsql) and
SQLAlchemy never saw the error: a real deadlock, made with a second session that
waits long enough (deadlock_timeout) for PostgreSQL to pick the store's transaction."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from relay.audit.events import DaemonStarted
from relay.config.model import StorageConfig
from relay.errors import StoreError
from relay.message.analysis import analyse
from relay.store import fastsql
from relay.store.mailstore import Appended, MailStore
from relay.store.store import Store
from tests.conftest import PG_URL
from tests.imap.support import letter

BOX = "secretariat@cpts-demo.mssante.fr"
FLAGGED = "\\Flagged"
_WHEN = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)


@contextlib.asynccontextmanager
async def _other_session(schema: str | None) -> AsyncIterator[asyncpg.Connection]:
    """A second session on the store's schema that waits long
    before it looks for a deadlock, so that PostgreSQL picks the store's transaction
    (deadlock_timeout 1 s) as the victim."""
    assert schema is not None
    other = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await other.execute(f'SET search_path TO "{schema}"')
        await other.execute("SET deadlock_timeout = '20s'")
        yield other
    finally:
        await other.close()


@pytest.mark.parametrize("engine_name", ["postgresql"])
async def test_a_deadlock_met_by_a_raw_statement_is_retried(
    store: Store, storage: StorageConfig
) -> None:
    """In a unit (the folder bump of a STORE): the batch is run again, unit by unit."""
    mail = MailStore(store)
    _, uids = await mail.append_many(
        BOX,
        "INBOX",
        [Appended(letter(0), analyse(letter(0)), frozenset(), _WHEN)],
        person=None,
        make_event=lambda got: [None] * len(got),
    )
    inbox = await mail.folder(BOX, "INBOX")
    assert inbox is not None
    async with _other_session(storage.schema) as other:
        tx = other.transaction()
        await tx.start()
        await other.execute("UPDATE folders SET uidnext = uidnext WHERE id = $1", inbox.id)
        # The STORE's batch locks the audit head, then waits for the folder row (its
        # bump, a raw statement) ...
        storing = asyncio.create_task(
            mail.store_flags(inbox.id, uids, "+FLAGS", frozenset({FLAGGED}), person=None)
        )
        await asyncio.sleep(0.3)
        # ... while this session, holding the folder row, asks for the audit head.
        await other.execute("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")
        await tx.commit()
        got = await asyncio.wait_for(storing, 30)
    assert [c.uid for c in got.changed] == uids
    _, rows = await mail.snapshot(BOX, "INBOX", None)
    assert {r.uid: r.flags for r in rows} == {uids[0]: frozenset({FLAGGED})}


@pytest.mark.parametrize("engine_name", ["postgresql"])
async def test_a_deadlock_met_writing_the_audit_rows_is_retried(
    store: Store, storage: StorageConfig
) -> None:
    """The batch's own audit rows go in raw after its units: a deadlock there used to
    fail the batch (the callers got StoreError) instead of running it again."""
    async with _other_session(storage.schema) as other:
        tx = other.transaction()
        await tx.start()
        # This session takes the next audit sequence number first (not committed) ...
        head = await other.fetchval("SELECT seq FROM audit_head WHERE id = 1")
        await other.execute(
            "INSERT INTO audit (seq, ts, action, data, prev_hash, hash)"
            " VALUES ($1, 'now', 'test.other', '{}', '', '')",
            head + 1,
        )
        # ... the store's batch locks the head and waits on that number ...
        recording = asyncio.create_task(
            store.record(DaemonStarted(version="test", config_file="relay.toml"))
        )
        await asyncio.sleep(0.3)
        # ... while this session asks for the head: PostgreSQL ends the store's
        # transaction, and this one gives its row up.
        await other.execute("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")
        await tx.rollback()
        await asyncio.wait_for(recording, 30)
        rows = await other.fetch("SELECT seq, action FROM audit WHERE seq > $1", head)
    assert [(r["seq"], r["action"]) for r in rows] == [(head + 1, "daemon.started")]


def _started(n: int) -> DaemonStarted:
    return DaemonStarted(version=f"test-{n}", config_file="relay.toml")


@pytest.mark.parametrize("engine_name", ["postgresql"])
async def test_two_writers_on_one_database_keep_one_chain(
    store: Store, storage: StorageConfig
) -> None:
    """Each store remembers the audit head its last commit left, to lock it in the same
    round trip as BEGIN instead of reading it: when another process has written to
    the chain since, the batch meets the numbers taken and is run again from the head
    read under its lock, so the chain stays one, whole."""
    await store.record(_started(1))
    other = await Store.open(storage)
    try:
        await other.record(_started(2))
        await other.record(_started(3))
        await store.record(_started(4))  # its remembered head is two rows behind
        await other.record(_started(5))
        await store.record(_started(6), _started(7))
    finally:
        await other.close()
    result = await store.verify_audit()
    assert result.ok, result
    rows = await store.audit_rows()
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    started = [
        json.loads(r.data)["details"]["version"] for r in rows if r.action == "daemon.started"
    ]
    assert [v for v in started if v.startswith("test-")] == [f"test-{n}" for n in range(1, 8)]


@pytest.mark.parametrize("engine_name", ["postgresql"])
async def test_a_head_moved_without_rows_is_followed(store: Store) -> None:
    """The head moved (seq and hash) with no row at the number this store would take
    next: the batch's head UPDATE finds the head elsewhere, and the batch is run again
    from the head as the database has it (as it was before the head was remembered)."""
    await store.record(_started(1))
    seq, _ = await store.audit_head()
    await store.execute_admin("UPDATE audit_head SET seq = seq + 10, hash = :h", {"h": "f" * 64})
    await store.record(_started(2))
    rows = await store.audit_rows()
    assert rows[-1].seq == seq + 11
    assert rows[-1].prev_hash == "f" * 64


@dataclass
class _TwoBatches:
    """A first unit that keeps its batch open (the audit head locked) until `release`
    is set, and a second unit queued behind it, waiting at the first one's COMMIT."""

    first: asyncio.Task[str]
    second: asyncio.Task[str]
    release: asyncio.Event


async def _two_batches(store: Store, first_version: str = "test-1") -> _TwoBatches:
    held = asyncio.Event()
    release = asyncio.Event()

    async def slow(conn: Any, ctx: Any) -> str:
        ctx.audit(DaemonStarted(version=first_version, config_file="relay.toml"))
        held.set()
        await release.wait()
        return "first"

    async def second(conn: Any, ctx: Any) -> str:
        ctx.audit(_started(2))
        return "second"

    first_done = asyncio.create_task(store.transact(slow))
    await asyncio.wait_for(held.wait(), 10)
    second_done = asyncio.create_task(store.transact(second))
    await asyncio.sleep(0.1)  # queued: the writer sees it waiting at the COMMIT
    return _TwoBatches(first_done, second_done, release)


async def _versions_in_chain(store: Store) -> list[str]:
    """The test versions of the daemon.started events, in chain order, once the whole
    chain is verified."""
    result = await store.verify_audit()
    assert result.ok, result
    versions = [
        json.loads(r.data)["details"]["version"]
        for r in await store.audit_rows()
        if r.action == "daemon.started"
    ]
    return [v for v in versions if v.startswith("test-")]


@pytest.mark.parametrize("engine_name", ["postgresql"])
async def test_a_next_begin_that_fails_after_its_commit_loses_nothing(
    store: Store, storage: StorageConfig
) -> None:
    """With units waiting, a batch's COMMIT carries the next batch's BEGIN and head
    lock in the same round trip. If the lock's wait is cancelled, the COMMIT before it
    stands: the batch's callers get their results (not an error, which would make an
    SMTP client send again), and the next batch runs in a transaction of its own."""
    batches = await _two_batches(store)
    async with _other_session(storage.schema) as other:
        tx = other.transaction()
        await tx.start()
        # Waits for the table behind the first batch, and is given it at its COMMIT
        # (table locks are granted in turn, a row's are not): the next BEGIN's lock
        # then waits behind this session.
        locking = asyncio.create_task(other.execute("LOCK TABLE audit_head IN EXCLUSIVE MODE"))
        await asyncio.sleep(0.3)
        batches.release.set()
        await asyncio.wait_for(locking, 10)
        for _ in range(100):
            pid = await other.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE state = 'active'"
                " AND query LIKE 'COMMIT; BEGIN%'"
            )
            if pid is not None:
                break
            await asyncio.sleep(0.05)
        assert pid is not None, "the COMMIT did not carry the next BEGIN"
        await other.execute("SELECT pg_cancel_backend($1)", pid)
        assert await asyncio.wait_for(batches.first, 10) == "first"
        await tx.commit()
    assert await asyncio.wait_for(batches.second, 10) == "second"
    assert await _versions_in_chain(store) == ["test-1", "test-2"]


@pytest.mark.parametrize("engine_name", ["postgresql"])
async def test_a_cancel_between_the_commit_and_the_next_begin_loses_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel lands after the COMMIT and before the next BEGIN (CI met it once
    under load, in the test above): the connection is then in no transaction, as
    after a COMMIT that failed, and only the server can say that the COMMIT went
    through. The batch's callers get their results; the next batch runs on its own.
    The backend cancels itself from a statement put between the two, so the cancel
    lands there every time."""
    monkeypatch.setattr(
        fastsql,
        "_NEXT_AFTER_COMMIT",
        "SELECT pg_cancel_backend(pg_backend_pid()); " + fastsql._NEXT_AFTER_COMMIT,
    )
    batches = await _two_batches(store)
    batches.release.set()
    assert await asyncio.wait_for(batches.first, 10) == "first"
    assert await asyncio.wait_for(batches.second, 10) == "second"
    assert await _versions_in_chain(store) == ["test-1", "test-2"]


@pytest.mark.parametrize("engine_name", ["postgresql"])
async def test_a_commit_the_server_refuses_is_an_error_and_keeps_nothing(
    store: Store, storage: StorageConfig
) -> None:
    """The other side of the question asked after an error: a COMMIT that PostgreSQL
    refuses (here a deferred constraint trigger that fails at COMMIT, with a unit
    waiting so that the COMMIT carries the next BEGIN) is not taken for done. Its
    caller gets the error; the unit waiting runs in its own transaction; the chain has
    no hole."""
    async with _other_session(storage.schema) as other:
        await other.execute(
            """CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.data LIKE '%test-refused%' THEN RAISE EXCEPTION 'refused'; END IF;
                RETURN NEW;
            END $$"""
        )
        await other.execute(
            "CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON audit"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit()"
        )
    batches = await _two_batches(store, first_version="test-refused")
    batches.release.set()
    with pytest.raises(StoreError, match="could not be committed"):
        await asyncio.wait_for(batches.first, 10)
    assert await asyncio.wait_for(batches.second, 10) == "second"
    assert await _versions_in_chain(store) == ["test-2"]
