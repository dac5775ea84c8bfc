"""Statements of the hot paths, run on the driver's own connection.

SQLAlchemy builds, compiles and caches a statement on every `execute`: on the
acceptance path that cost more than the statements themselves (py-spy, bench/README).
Here each statement is built from the schema's tables *once*, compiled by SQLAlchemy
for the dialect in use (so the SQL text, the parameter order and the value conversions
are SQLAlchemy's own: a row written here reads back through SQLAlchemy exactly as one
written by it), then run straight on the DBAPI connection of the transaction that is
open: the stdlib `sqlite3` connection in SQLite's writer thread (its statement cache
keeps it prepared), or the `asyncpg` connection on PostgreSQL (prepared and cached by
asyncpg). The transaction stays SQLAlchemy's: begun, savepointed and committed by it.

Only the store uses this module; the schema, migrations and cold paths stay on
SQLAlchemy Core.
"""

from __future__ import annotations

import binascii
import datetime as dt
from collections.abc import AsyncIterator, Callable, Generator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Integer, bindparam, func, insert, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from relay.store import schema as t
from relay.store.crypto import SealedStream

Processor = Callable[[Any], Any] | None

# A message at least this big is sealed while it is written, a chunk at a time
# (BlobCipher.seal_later: `data` is then a SealedStream), never held sealed whole.
LARGE_BLOB_BYTES = 1 << 20
# A large blob goes to the database this many bytes at a time (PostgreSQL: COPY;
# SQLite: incremental blob I/O).
BLOB_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Prepared:
    """One statement compiled for a dialect: positional SQL and how to order and
    convert a row's values for it."""

    sql: str
    names: tuple[str, ...]
    processors: tuple[Processor, ...]
    # the values the statement itself holds (`id == 1`, `uidnext + 1`)
    constants: Mapping[str, Any]

    def args(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for name, proc in zip(self.names, self.processors, strict=True):
            value = values[name] if name in values else self.constants[name]
            out.append(proc(value) if proc is not None else value)
        return tuple(out)


def prepare(stmt: ClauseElement, dialect: Dialect) -> Prepared:
    compiled = cast(SQLCompiler, stmt.compile(dialect=dialect))
    names = tuple(compiled.positiontup or ())
    processors = tuple(
        compiled.binds[n].type.dialect_impl(dialect).bind_processor(dialect) for n in names
    )
    constants = {n: v for n, v in compiled.params.items() if v is not None}
    return Prepared(compiled.string, names, processors, constants)


def insert_of(table: Any, *names: str) -> Any:
    """INSERT of the named columns, one parameter per column named as the column; a
    column left out gets its server default (so a column added later with one does not
    break this statement)."""
    columns = [table.c[n] for n in names]
    # inline(): no RETURNING of the generated key (nothing here reads it back)
    return insert(table).inline().values({c.name: bindparam(c.name, type_=c.type) for c in columns})


BLOB_COLUMNS = ("id", "size", "data", "meta", "created_at")
MESSAGE_COLUMNS = (
    "folder_id",
    "uid",
    "modseq",
    "blob_id",
    "internal_date",
    "internal_offset",
    "size",
    "flags",
    "message_id",
)
QUEUE_COLUMNS = (
    "queue_id",
    "blob_id",
    "sender",
    "recipient",
    "status",
    "attempts",
    "created_at",
    "next_attempt_at",
    "message_id",
    "person",
    "box",
    "delay_warned",
)
AUDIT_COLUMNS = ("seq", "ts", "action", "person", "box", "peer", "data", "prev_hash", "hash")


@dataclass(frozen=True, slots=True)
class Statements:
    """The hot statements of one dialect."""

    insert_blob: Prepared
    # the same row with `data` as zeroblob(:data_bytes), filled in after (SQLite)
    insert_zeroblob: Prepared
    insert_message: Prepared
    insert_queue: Prepared
    insert_audit: Prepared
    # `n` UIDs at once: one row, (uidnext, highestmodseq) after adding `n` to both
    next_uids: Prepared
    head: Prepared
    head_for_update: Prepared  # PostgreSQL's batch, when the head is not known
    set_head: Prepared
    # PostgreSQL only: the end of a batch in one statement
    tail: BatchTail | None

    @classmethod
    def for_dialect(cls, dialect: Dialect) -> Statements:
        folders = t.folders.c
        next_uids = (
            update(t.folders)
            .where(folders.id == bindparam("folder_id"))
            .values(
                uidnext=folders.uidnext + bindparam("n", type_=Integer),
                highestmodseq=folders.highestmodseq + bindparam("n", type_=Integer),
            )
            .returning(folders.uidnext, folders.highestmodseq)
        )
        head = select(t.audit_head.c.seq, t.audit_head.c.hash).where(t.audit_head.c.id == 1)
        head_for_update = head.with_for_update() if dialect.name == "postgresql" else head
        set_head = (
            update(t.audit_head)
            .where(t.audit_head.c.id == 1)
            .values(seq=bindparam("head_seq"), hash=bindparam("head_hash"))
        )
        blob_params = {
            c.name: bindparam(c.name, type_=c.type) for c in t.blobs.c if c.name != "data"
        }
        zeroblob = (
            insert(t.blobs)
            .inline()
            .values({**blob_params, "data": func.zeroblob(bindparam("data_bytes", type_=Integer))})
        )
        insert_blob = prepare(insert_of(t.blobs, *BLOB_COLUMNS), dialect)
        insert_message = prepare(insert_of(t.messages, *MESSAGE_COLUMNS), dialect)
        insert_queue = prepare(insert_of(t.queue, *QUEUE_COLUMNS), dialect)
        insert_audit = prepare(insert_of(t.audit, *AUDIT_COLUMNS), dialect)
        tail = None
        if dialect.name == "postgresql":
            tail = BatchTail.build(
                dialect,
                [
                    (t.blobs, insert_blob),
                    (t.messages, insert_message),
                    (t.queue, insert_queue),
                    (t.audit, insert_audit),
                ],
            )
        return cls(
            insert_blob=insert_blob,
            insert_zeroblob=prepare(zeroblob, dialect),
            insert_message=insert_message,
            insert_queue=insert_queue,
            insert_audit=insert_audit,
            next_uids=prepare(next_uids, dialect),
            head=prepare(head, dialect),
            head_for_update=prepare(head_for_update, dialect),
            set_head=prepare(set_head, dialect),
            tail=tail,
        )


@dataclass(frozen=True, slots=True)
class BatchTail:
    """PostgreSQL: what a batch writes after its units, in ONE statement. The small
    blobs, the messages, the queue rows and the audit rows are each one INSERT of
    `unnest`ed column arrays, and the audit head's UPDATE and the NOTIFY for the other
    nodes come with them, all as data-modifying CTEs. Before, these were six round
    trips to the server, and the writer was bound by round trips (bench/README.md).

    Foreign keys (messages and queue → blobs) are checked at the end of the statement,
    so they see the blobs inserted beside them. Each part's columns, their order and
    the value conversions are those of the one-row INSERT it stands for (`parts`)."""

    sql: str
    parts: tuple[Prepared, ...]  # blobs, messages, queue, audit

    @classmethod
    def build(cls, dialect: Dialect, parts: Sequence[tuple[Any, Prepared]]) -> BatchTail:
        ctes: list[str] = []
        n = 0
        for i, (table, stmt) in enumerate(parts):
            arrays = []
            for name in stmt.names:
                n += 1
                arrays.append(f"${n}::{table.c[name].type.compile(dialect=dialect)}[]")
            columns, values = ", ".join(stmt.names), ", ".join(arrays)
            # the schema's own names; every value is bound
            insert_sql = f"INSERT INTO {table.name} ({columns}) SELECT * FROM unnest({values})"  # noqa: S608
            ctes.append(f"p{i} AS ({insert_sql})")
        head = t.audit_head.c
        seq_type = head.seq.type.compile(dialect=dialect)
        hash_type = head.hash.type.compile(dialect=dialect)
        new_head = f"seq = ${n + 1}::{seq_type}, hash = ${n + 2}::{hash_type}"
        # Moved only from where the batch found it (`args`: else no row, and the
        # statement says so).
        was = f"seq = ${n + 6}::{seq_type} AND hash = ${n + 7}::{hash_type}"
        where = f"id = 1 AND ${n + 3}::BOOLEAN AND {was}"
        head_sql = f"UPDATE audit_head SET {new_head} WHERE {where} RETURNING 1"  # noqa: S608
        ctes.append(f"h AS ({head_sql})")
        notify = (
            f"SELECT CASE WHEN ${n + 5}::TEXT IS NULL THEN NULL"
            f" ELSE pg_notify(${n + 4}::TEXT, ${n + 5}::TEXT) END"
        )
        moved = f", ${n + 3}::BOOLEAN AND NOT EXISTS (SELECT 1 FROM h)"  # noqa: S608
        # The transaction's id, so that a COMMIT whose answer is an error can be
        # asked about afterwards (AsyncpgRaw.commit).
        notify += moved + ", pg_current_xact_id()::TEXT"
        return cls("WITH " + ",\n".join(ctes) + "\n" + notify, tuple(s for _, s in parts))

    def args(
        self,
        rows: Sequence[Sequence[Mapping[str, Any]]],
        head: tuple[tuple[int, str], tuple[int, str]] | None,
        channel: str,
        payload: str | None,
    ) -> list[Any]:
        """The arrays of `rows` (one list of rows per part, in order), then the audit
        head (new, and as the batch found it; None: unchanged) and the NOTIFY (payload
        None: none). The statement's row says whether the head had moved meanwhile
        (second column: then nothing of it must be committed), then gives the
        transaction's id (third)."""
        out: list[Any] = []
        for stmt, part in zip(self.parts, rows, strict=True):
            converted = [stmt.args(r) for r in part]
            out.extend(list(column) for column in zip(*converted, strict=True))
            if not converted:
                out.extend([] for _ in stmt.names)
        (seq, hash_), (was_seq, was_hash) = head if head is not None else ((0, ""), (0, ""))
        out.extend([seq, hash_, head is not None, channel, payload, was_seq, was_hash])
        return out


class Raw:
    """The open transaction's DBAPI connection, for `Prepared` statements."""

    async def execute(self, stmt: Prepared, values: Mapping[str, Any]) -> None:
        raise NotImplementedError

    async def executemany(self, stmt: Prepared, rows: Sequence[Mapping[str, Any]]) -> None:
        raise NotImplementedError

    async def fetchone(self, stmt: Prepared, values: Mapping[str, Any]) -> tuple[Any, ...] | None:
        raise NotImplementedError

    async def fetchall(self, stmt: Prepared, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Every row, as plain tuples (a big read: no per-row object of SQLAlchemy's)."""
        raise NotImplementedError

    async def tail(self, tail: BatchTail, args: Sequence[Any]) -> bool:
        """The batch's last statement (`BatchTail`: PostgreSQL only); True if the audit
        head had moved from where the batch found it."""
        raise NotImplementedError

    async def begin(self, *, lock_head: bool = False) -> None:
        """PostgreSQL's writer: see `AsyncpgRaw.begin`."""
        raise NotImplementedError

    async def commit(self, *, then_begin: bool = False) -> bool:
        raise NotImplementedError

    def in_transaction(self) -> bool:
        raise NotImplementedError

    async def rollback(self) -> bool:
        raise NotImplementedError

    async def insert_blob(self, sql: Statements, values: Mapping[str, Any]) -> None:
        """One `blobs` row; `values["data"]` is its sealed content."""
        await self.execute(sql.insert_blob, values)

    async def insert_blobs(self, sql: Statements, rows: Sequence[Mapping[str, Any]]) -> None:
        """`blobs` rows: the small ones in one statement, each large one on its own
        (`insert_blob`, which the engines stream)."""
        await self.executemany(
            sql.insert_blob, [r for r in rows if len(r["data"]) < LARGE_BLOB_BYTES]
        )
        for r in rows:
            if len(r["data"]) >= LARGE_BLOB_BYTES:
                await self.insert_blob(sql, r)


class SqliteRaw(Raw):
    """The stdlib sqlite3 connection (synchronous; used in the writer thread, where the
    units' coroutines are driven without an event loop)."""

    __slots__ = ("_conn",)

    def __init__(self, dbapi_conn: Any) -> None:
        self._conn = dbapi_conn

    async def execute(self, stmt: Prepared, values: Mapping[str, Any]) -> None:
        self._conn.execute(stmt.sql, stmt.args(values))

    async def executemany(self, stmt: Prepared, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            self._conn.executemany(stmt.sql, [stmt.args(r) for r in rows])

    async def insert_blob(self, sql: Statements, values: Mapping[str, Any]) -> None:
        """A large blob is written into its row a chunk at a time (incremental blob
        I/O): bound as a parameter, sqlite3 copies the whole value (SQLITE_TRANSIENT)
        and SQLite builds the row's record around another copy, two more copies of a
        25 MB message beside the sealed buffer (bench.compare bigmsg). The row goes in
        with zeroblob(n) as `data`, which SQLite keeps lazy because `data` is the
        table's last column (migration 0007), then blobopen fills it through the
        page cache; in the writer's transaction, like the INSERT it replaces."""
        data = values["data"]
        if len(data) < LARGE_BLOB_BYTES:
            await self.execute(sql.insert_blob, values)
            return
        stmt = sql.insert_zeroblob
        cur = self._conn.execute(stmt.sql, stmt.args({**values, "data_bytes": len(data)}))
        rowid = cur.lastrowid
        cur.close()
        with self._conn.blobopen("blobs", "data", rowid) as blob, closing(pieces(data)) as it:
            for piece in it:
                blob.write(piece)

    async def fetchone(self, stmt: Prepared, values: Mapping[str, Any]) -> tuple[Any, ...] | None:
        cur = self._conn.execute(stmt.sql, stmt.args(values))
        try:
            row = cur.fetchone()
            if row is not None:
                cur.fetchall()  # RETURNING: the statement completes when read to the end
            return cast(tuple[Any, ...] | None, row)
        finally:
            cur.close()

    async def fetchall(self, stmt: Prepared, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        return cast(
            list[tuple[Any, ...]], self._conn.execute(stmt.sql, stmt.args(values)).fetchall()
        )


class AsyncpgRaw(Raw):
    """The asyncpg connection under SQLAlchemy's adapter, inside its transaction."""

    __slots__ = ("_conn", "_xid")

    def __init__(self, asyncpg_conn: Any) -> None:
        self._conn = asyncpg_conn
        # The open transaction's id, once its tail ran (each `raw_connection` makes a
        # new one, and `commit` forgets it).
        self._xid: str | None = None

    async def execute(self, stmt: Prepared, values: Mapping[str, Any]) -> None:
        await self._conn.execute(stmt.sql, *stmt.args(values))

    async def executemany(self, stmt: Prepared, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            await self._conn.executemany(stmt.sql, [stmt.args(r) for r in rows])

    async def insert_blob(self, sql: Statements, values: Mapping[str, Any]) -> None:
        """A large blob goes to the server by COPY, its sealed content sent a chunk at a
        time: bound as a parameter, asyncpg encodes the whole value into its message
        buffer and the transport keeps what the socket has not taken yet, two more
        copies of a 25 MB message beside the sealed buffer (bench.compare bigmsg)."""
        if len(values["data"]) < LARGE_BLOB_BYTES:
            await self.execute(sql.insert_blob, values)
            return
        await self._conn.copy_to_table(
            "blobs", source=_copy_row(values), columns=list(BLOB_COLUMNS), format="text"
        )

    async def fetchone(self, stmt: Prepared, values: Mapping[str, Any]) -> tuple[Any, ...] | None:
        row = await self._conn.fetchrow(stmt.sql, *stmt.args(values))
        return None if row is None else tuple(row)

    async def tail(self, tail: BatchTail, args: Sequence[Any]) -> bool:
        """The batch's last statement (`BatchTail`)."""
        row = await self._conn.fetchrow(tail.sql, *args)
        self._xid = str(row[2])
        return bool(row[1])

    async def begin(self, *, lock_head: bool = False) -> None:
        """BEGIN the batch's transaction here, not through SQLAlchemy (which runs in it
        without one: AUTOCOMMIT); with `lock_head`, the audit head is locked in the
        same round trip (a simple query of two statements; its row is not needed)."""
        await self._conn.execute(_BEGIN_LOCKING_HEAD if lock_head else _BEGIN)

    async def commit(self, *, then_begin: bool = False) -> bool:
        """COMMIT; with `then_begin`, the next batch's `begin(lock_head=True)` in the
        same round trip. True if that next transaction is open.

        An error in answer does not always mean that nothing was committed. The
        statements of one simple query stop at the first that fails, and a cancel
        (pg_cancel_backend, a timeout) can land in the next statement, or between the
        COMMIT and the BEGIN. So on an error the server is asked what became of the
        transaction (`pg_xact_status` of the id its tail gave). Committed: no error is
        raised, and a next transaction left failed is rolled back (the caller does not
        keep a connection still in one). Not committed, or not known: the error is
        raised.

        The id is not known when no tail ran: the batch wrote no audit event, no
        message and changed no folder's messages (the units left are the \\Recent
        watermark, and a STORE or EXPUNGE that found nothing to change). Such a batch
        can be told it failed when it committed, in the gap alone; its units can be run
        again. Not pipelining them would cost a round trip each, and 39 % of the
        batches have no tail under imaptest's stress with sessions kept."""
        xid, self._xid = self._xid, None
        try:
            if then_begin:
                await self._conn.execute(f"COMMIT; {_NEXT_AFTER_COMMIT}")
                return True
            await self._conn.execute("COMMIT")
            return False
        except Exception:
            if self._conn.is_in_transaction():  # the BEGIN after the COMMIT ran
                await self.rollback()  # if it fails, the caller sees in_transaction()
                return False
            if not await self._committed(xid):
                raise
            return False

    async def _committed(self, xid: str | None) -> bool:
        """Whether transaction `xid` is known to the server as committed, asked on
        this connection if it is still open."""
        if xid is None or self._conn.is_closed():
            return False
        try:
            status = await self._conn.fetchval("SELECT pg_xact_status($1::TEXT::xid8)", xid)
        except Exception:
            return False
        return bool(status == "committed")

    def in_transaction(self) -> bool:
        return bool(self._conn.is_in_transaction())

    async def rollback(self) -> bool:
        """End a transaction begun by `begin` without committing it; False if the
        connection could not be brought back to no transaction (then it must not be
        used again)."""
        try:
            if self._conn.is_in_transaction():
                await self._conn.execute("ROLLBACK")
            return not self._conn.is_in_transaction()
        except Exception:
            return False

    async def fetchall(self, stmt: Prepared, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self._conn.fetch(stmt.sql, *stmt.args(values))]


_BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED"
_BEGIN_LOCKING_HEAD = (
    "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT 1 FROM audit_head WHERE id = 1 FOR UPDATE"
)
_NEXT_AFTER_COMMIT = _BEGIN_LOCKING_HEAD  # what a COMMIT carries when units wait


async def _copy_row(values: Mapping[str, Any]) -> AsyncIterator[bytes]:
    """One `blobs` row in COPY's text format (bytea as hex, `\\x...`), in pieces."""
    created = values["created_at"]
    assert isinstance(created, dt.datetime) and created.tzinfo is not None
    id_, size = str(values["id"]), int(values["size"])
    assert id_.isalnum()  # a hex token: nothing to escape
    yield f"{id_}\t{size}\t\\\\x".encode("ascii")
    with closing(pieces(values["data"])) as it:
        for piece in it:
            yield binascii.hexlify(piece)
    meta = binascii.hexlify(values["meta"]).decode("ascii")
    yield f"\t\\\\x{meta}\t{created.isoformat()}\n".encode("ascii")


def pieces(data: bytes | bytearray | SealedStream) -> Generator[bytes | memoryview, None, None]:
    """A large blob's sealed bytes, BLOB_CHUNK_BYTES at a time (each piece valid until
    the next is asked for)."""
    if isinstance(data, SealedStream):
        yield from data.pieces(BLOB_CHUNK_BYTES)
        return
    with memoryview(data) as view:
        for start in range(0, len(view), BLOB_CHUNK_BYTES):
            yield view[start : start + BLOB_CHUNK_BYTES]


async def raw_connection(conn: AsyncConnection) -> Raw:
    """The DBAPI connection under `conn` (an AsyncConnection, or the writer thread's
    adapter around a synchronous Connection), in the transaction that is open there:
    SQLite's, begun by SQLAlchemy (the writer's BEGIN IMMEDIATE, a reader's BEGIN);
    PostgreSQL's writer begins its own (`AsyncpgRaw.begin`), and a point read runs
    without one (one statement)."""
    sync = getattr(conn, "sync_connection", None)
    if conn.dialect.name == "sqlite":
        assert sync is not None
        return SqliteRaw(sync.connection.driver_connection)
    fairy = await conn.get_raw_connection()
    return AsyncpgRaw(fairy.driver_connection)
