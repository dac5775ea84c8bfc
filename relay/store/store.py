"""The store: every durable change goes through one group-committing writer.

A caller hands the writer a *unit*: an async function that runs inside a transaction
and may add audit events. The writer takes every unit waiting at that moment, runs each
in its own savepoint, appends the audit rows of those that succeeded to the hash chain,
and commits once. Only when that commit returns (SQLite WAL with synchronous=FULL:
fsync of the log; PostgreSQL: WAL flush) are the callers' futures resolved: SMTP
answers 250 after that and not before. Units that finish at the same moment share one
fsync (group commit), so throughput is not bounded by one fsync per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import structlog
from sqlalchemy import and_, case, create_engine, delete, event, insert, select, text, update
from sqlalchemy.engine import Connection as SyncConnection
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from relay.audit.anchors import (
    Anchor,
    append_line,
    check,
    judge,
    make_anchor,
    parse,
    read_lines,
    to_line,
)
from relay.audit.chain import AuditRow, VerifyResult, canonical_json, row_hash, verify
from relay.audit.events import AuditEvent
from relay.config.model import StorageConfig
from relay.errors import StoreError
from relay.metrics import Metrics
from relay.store import schema as t
from relay.store.crypto import BlobCipher, SealedStream, key_id
from relay.store.fastsql import LARGE_BLOB_BYTES, Raw, Statements, raw_connection
from relay.store.keys import KeyKind, OpenedKeys, RegisteredKey, registered_keys

T = TypeVar("T")

log = structlog.get_logger("relay.store")
audit_log = structlog.get_logger("relay.audit")

# Folders every box has (RFC 6154 special-use attributes).
DEFAULT_FOLDERS: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
)

MAX_BATCH_UNITS = 256
# SQLite: a batch whose units write at most this many bytes runs its statements on
# the event loop (`_ThreadWriter.run_here`): about a millisecond for 256 KiB of small
# messages; bigger ones are written in the writer's thread.
LOOP_BATCH_BYTES = 256 << 10
# SQLite readers: threads with their own synchronous connection (WAL: they never wait
# behind the writer). Two shared cores: more threads would only contend for the GIL.
READ_THREADS = 2
RETRIES_ON_CONFLICT = 5


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("store.record_failed", error=repr(future.exception()))


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _UnitFailed(Exception):
    """A unit raised in a batch run without savepoints."""


class _HeadMoved(Exception):
    """PostgreSQL: the audit head was not where this store's last commit left it
    (another process wrote to the chain since): the batch is run again, the head read
    under its lock."""


class TxContext:
    """What a unit may do besides SQL: add audit events, mark folders changed."""

    __slots__ = ("accepted", "events", "raw", "touched")

    def __init__(self, raw: Raw | None = None, accepted: _BatchAcceptances | None = None) -> None:
        self.events: list[AuditEvent] = []
        self.touched: set[int] = set()
        # The transaction's DBAPI connection, for the store's prepared hot statements
        # (relay.store.fastsql); set by the writer for every unit.
        self.raw = raw
        # The batch's acceptances, written together after the last unit (None: a unit
        # in its own savepoint writes its rows itself).
        self.accepted = accepted

    def audit(self, *events: AuditEvent) -> None:
        self.events.extend(events)

    def touch(self, folder_id: int) -> None:
        self.touched.add(folder_id)


Unit = Callable[[AsyncConnection, TxContext], Awaitable[T]]
# What a batch gives back: each unit's (ok, result or error), and the audit rows
# written with the events they are made of.
_BatchOutcome = tuple[list[tuple[bool, Any]], list[tuple["AuditRow", AuditEvent]]]


@dataclass(slots=True)
class _Pending(Generic[T]):
    unit: Unit[T]
    future: asyncio.Future[T]
    ctx: TxContext = field(default_factory=TxContext)
    # The bytes this unit writes, where its caller knows them (an acceptance: its
    # message; an audit event: 0); None: not known. SQLite runs a batch whose units
    # are all known and small on the event loop (`_ThreadWriter.run_here`).
    weight: int | None = None


@dataclass(slots=True)
class _AcceptedRows:
    """One acceptance's rows, waiting for the batch's multi-row INSERTs."""

    blob: dict[str, Any]
    folders: list[tuple[str, int]]  # (box, folder id) per local recipient
    message: dict[str, Any]  # the messages row but its folder, UID and MODSEQ
    queue: list[dict[str, Any]]
    queue_id: str
    result: AcceptResult | None = None


class _BatchAcceptances:
    """The acceptances of one batch, written after its last unit with one statement
    per table (blobs, messages, queue) and one UID allocation per folder, instead of
    three or four statements per message. The rows are only written inside the
    batch's transaction, so they are as durable, and as atomic with the units' audit
    events, as rows each unit wrote itself.

    `blobs` and `messages` are rows a unit made whole itself (APPEND: its UIDs taken
    in its own folder bump), written with the rest. A later unit of the same batch
    does not see them: it is as if it had run first, which no session can tell (none
    knows their UIDs before the commit)."""

    __slots__ = ("blobs", "messages", "pending")

    def __init__(self) -> None:
        self.pending: list[_AcceptedRows] = []
        self.blobs: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []

    @property
    def any(self) -> bool:
        return bool(self.pending or self.blobs)

    async def write(self, raw: Raw, sql: Statements, *, defer: bool = False) -> _TailRows:
        """The UIDs taken, and the rows written; with `defer`, the rows (all but the
        large blobs, streamed now) are returned for the batch's tail (PostgreSQL's
        `BatchTail`) instead."""
        tail = _TailRows()
        if not self.any:
            return tail
        wanted: dict[int, int] = {}
        for p in self.pending:
            for _, folder_id in p.folders:
                wanted[folder_id] = wanted.get(folder_id, 0) + 1
        # (next UID, next MODSEQ) per folder; folders locked in id order (PostgreSQL:
        # two nodes' batches never wait on each other in a cycle)
        following: dict[int, list[int]] = {}
        for folder_id in sorted(wanted):
            n = wanted[folder_id]
            got = await raw.fetchone(sql.next_uids, {"folder_id": folder_id, "n": n})
            if got is None:
                raise StoreError(f"folder {folder_id} vanished")
            following[folder_id] = [int(got[0]) - n, int(got[1]) - n + 1]
        messages: list[dict[str, Any]] = list(self.messages)
        queue: list[dict[str, Any]] = []
        for p in self.pending:
            deliveries = []
            for box, folder_id in p.folders:
                uid, modseq = following[folder_id]
                following[folder_id] = [uid + 1, modseq + 1]
                messages.append({**p.message, "folder_id": folder_id, "uid": uid, "modseq": modseq})
                deliveries.append(Delivery(box, folder_id, uid))
            queue.extend(p.queue)
            p.result = AcceptResult(p.queue_id, p.blob["id"], tuple(deliveries), len(p.queue))
        blobs = self.blobs + [p.blob for p in self.pending]
        if not defer:
            await raw.insert_blobs(sql, blobs)
            await raw.executemany(sql.insert_message, messages)
            await raw.executemany(sql.insert_queue, queue)
            return tail
        for b in blobs:
            if len(b["data"]) >= LARGE_BLOB_BYTES:
                await raw.insert_blob(sql, b)  # streamed (COPY), before the rows naming it
            else:
                tail.blobs.append(b)
        tail.messages, tail.queue = messages, queue
        return tail

    def clear(self) -> None:
        self.pending.clear()
        self.blobs.clear()
        self.messages.clear()


@dataclass(slots=True)
class _TailRows:
    """A batch's rows left for its tail (PostgreSQL: one statement, `BatchTail`)."""

    blobs: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    queue: list[dict[str, Any]] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return bool(self.blobs or self.messages or self.queue)


def _release(raw: bytes | bytearray) -> None:
    if isinstance(raw, bytearray):
        raw.clear()  # the caller handed the buffer over


@dataclass(frozen=True, slots=True)
class Acceptance:
    """A message to commit: the raw bytes as stored, where it goes, and its audit event.

    `audit` is completed with the queue id by the store (`queue_id` field).
    """

    # The message as stored. A bytearray is taken over: emptied once sealed (a big
    # message: once written and committed, sealed as it is written), so a big message
    # is not held twice while it is written.
    raw: bytes | bytearray
    meta: dict[str, Any]
    sender: str
    local_recipients: tuple[str, ...]
    remote_recipients: tuple[str, ...]
    message_id: str | None
    audit: Callable[[str], AuditEvent]  # queue id -> event
    folder: str = "INBOX"
    flags: str = ""
    person: str | None = None
    box: str | None = None
    internal_date: dt.datetime | None = None
    # The acceptance id the caller already showed (e.g. in the Received: header).
    queue_id: str | None = None
    # More work for the same transaction (e.g. a patient conversation's state).
    in_same_transaction: Callable[[AsyncConnection, TxContext], Awaitable[None]] | None = None
    # What `record_soon` handed to the writer before this (SMTP: the login event): the
    # message commits with it or after it, never without it (see `accept`).
    after: asyncio.Future[None] | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    box: str
    folder_id: int
    uid: int


@dataclass(frozen=True, slots=True)
class AcceptResult:
    queue_id: str
    blob_id: str
    deliveries: tuple[Delivery, ...]
    queued: int


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as a reader sees it (raw bytes decrypted)."""

    folder_id: int
    uid: int
    modseq: int
    flags: str
    size: int
    message_id: str | None
    internal_date: dt.datetime
    raw: bytes
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TrustEntry:
    """One domain of the MSSanté trust space, as stored."""

    domain: str  # IDNA ASCII, lower case
    name: str  # as published
    certificate_dn: str | None
    description: str | None
    updated: str | None


@dataclass(frozen=True, slots=True)
class AuditFilter:
    box: str | None = None
    person: str | None = None
    action: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    limit: int | None = None
    # Rows naming this Message-ID (no angle brackets) in `message_id` or `message_ids`.
    message_id: str | None = None
    # With `limit`: the newest rows (newest first), not the oldest.
    newest_first: bool = False


@dataclass(frozen=True, slots=True)
class WriterState:
    """The group-commit writer, as a health check sees it."""

    alive: bool  # the writer task runs
    waiting: int  # units handed in and not yet in a batch
    busy_seconds: float | None  # how long the batch being committed has run; None: idle


def _names_message(data: str, message_id: str) -> bool:
    details = json.loads(data).get("details") or {}
    return details.get("message_id") == message_id or message_id in (
        details.get("message_ids") or ()
    )


def _chain_taken(exc: BaseException) -> bool:
    """An audit row's sequence number was already taken (the chain's primary key)."""
    return getattr(exc, "sqlstate", None) == "23505" and getattr(exc, "table_name", None) == "audit"


def _is_conflict(exc: BaseException) -> bool:
    """PostgreSQL deadlock (40P01) or serialization failure (40001): safe to retry.
    Raised through SQLAlchemy (a DBAPIError around the driver's error) or by a
    statement run on the driver's own connection (relay.store.fastsql: asyncpg's
    error itself, which SQLAlchemy never saw)."""
    if isinstance(exc, _HeadMoved):
        return True
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code in {"40P01", "40001"}


class Store:
    """Messages, folders, queue and audit trail on SQLite or PostgreSQL."""

    def __init__(
        self,
        read_engine: AsyncEngine,
        write_engine: AsyncEngine,
        cipher: BlobCipher,
        *,
        audit_key: bytes | None = None,
        keyed_from: int | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        metrics: Metrics | None = None,
    ) -> None:
        self._read = read_engine
        self._write = write_engine
        self.cipher = cipher
        # The audit chain's HMAC key, and the first row it keys (relay.audit.chain).
        self.audit_key = audit_key
        self.keyed_from = keyed_from
        self.keys: OpenedKeys | None = None
        # Anchors (relay.audit.anchors): the newest head this store wrote, and the
        # newest it anchored; None until it writes or anchors one.
        self.anchor_file: Path | None = None
        self._written_head: tuple[int, str] | None = None
        # PostgreSQL: the audit head as this store's last commit left it (None: not
        # known, read it under its lock), so that a batch's BEGIN and the head's lock
        # are one round trip (`_execute_batch`).
        self._head: tuple[int, str] | None = None
        # PostgreSQL: a transaction begun, the head locked, in the round trip of the
        # last batch's COMMIT because units were already waiting (`_execute_batch`)
        self._next_tx: tuple[AsyncConnection, AsyncConnection, Raw] | None = None
        self._anchored_head: tuple[int, str] | None = None
        self.last_anchor: Anchor | None = None  # the newest this store wrote (`status`)
        self.clock = clock
        self.dialect = write_engine.dialect.name
        self._sql = Statements.for_dialect(write_engine.dialect)
        self._queue: asyncio.Queue[_Pending[Any] | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._folder_ids: dict[tuple[str, str], int] = {}
        self._listeners: list[Callable[[frozenset[int]], None]] = []
        self._queue_listeners: list[Callable[[], None]] = []
        self.commits = 0  # number of group commits (for benchmarks and tests)
        self.metrics = metrics or Metrics()
        # monotonic time the batch being committed started (None: the writer is idle)
        self._batch_started: float | None = None
        self._thread_writer: _ThreadWriter | None = None
        self._thread_readers: _ThreadReaders | None = None
        self.node_id = secrets.token_hex(6)
        self.notify_channel = "relay_folders"
        self._listen_conn: Any = None
        if self.dialect == "sqlite":
            self._thread_writer = _ThreadWriter(str(write_engine.url))
            self._thread_readers = _ThreadReaders(str(read_engine.url), READ_THREADS)

    # --- lifecycle ----------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        storage: StorageConfig,
        *,
        migrate: bool = True,
        may_create_keys: bool = False,
        clock: Callable[[], dt.datetime] = utcnow,
        metrics: Metrics | None = None,
    ) -> Store:
        """Open (and migrate) the store with its key files; raise KeyRefused if they are
        missing or wrong. Only `may_create_keys` (serve, `key init`) creates a missing
        key, and a message key only for an empty store (relay.store.keys)."""
        read_engine, write_engine = _make_engines(storage)
        try:
            if migrate:
                from relay.store.migrate import upgrade

                await upgrade(write_engine, schema=storage.schema)
            from relay.store.rotation import finish_interrupted_switch

            await finish_interrupted_switch(write_engine, storage)
            opened, keyed_from = await _settle_keys(
                write_engine, storage, may_create=may_create_keys, now=clock()
            )
        except BaseException as exc:
            await read_engine.dispose()
            await write_engine.dispose()
            if isinstance(exc, OSError | DBAPIError):
                from relay.config.summary import mask_url

                # The driver's own words, without SQLAlchemy's SQL echo and "Background
                # on this error" link: one line for the CLI and the log.
                reason = str(exc.orig if isinstance(exc, DBAPIError) else exc).strip()
                reason = " ".join(reason.split())
                if storage.url.startswith("sqlite"):
                    folder = Path(storage.url.split(":///", 1)[-1]).parent
                    if not folder.is_dir():
                        reason += f": the folder {folder} does not exist, serve creates it"
                raise StoreError(
                    f"{mask_url(storage.url)}: cannot open the database ({reason})"
                ) from exc
            raise
        store = cls(
            read_engine,
            write_engine,
            BlobCipher(opened.ring),
            audit_key=opened.audit_key,
            keyed_from=keyed_from,
            clock=clock,
            metrics=metrics,
        )
        store.keys = opened
        store.anchor_file = storage.audit_anchor_path
        if store.dialect == "postgresql":
            await store._listen(storage)
        store.start()
        if opened.events:
            await store.record(*opened.events)
        return store

    @property
    def statements(self) -> Statements:
        """The hot statements prepared for this store's dialect (relay.store.fastsql),
        for units that run them on `TxContext.raw`."""
        return self._sql

    @property
    def created_keys(self) -> tuple[KeyKind, ...]:
        """The key files this open created (empty but for a first start or `key init`)."""
        return self.keys.created if self.keys is not None else ()

    async def _listen(self, storage: StorageConfig) -> None:
        """LISTEN for the folders other nodes change (DESIGN.md: scale-out)."""
        import asyncpg

        # One channel per schema: installations sharing a database stay apart.
        self.notify_channel = f"relay_folders_{storage.schema or 'public'}"
        settings = {"search_path": storage.schema} if storage.schema else None
        self._listen_conn = await asyncpg.connect(
            storage.url.replace("postgresql+asyncpg://", "postgresql://", 1),
            server_settings=settings,
        )
        await self._listen_conn.add_listener(self.notify_channel, self._on_notify)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        node, _, ids = payload.partition(":")
        if node == self.node_id or not ids:
            return  # our own commit: local listeners were already called
        try:
            folders = frozenset(int(i) for i in ids.split(","))
        except ValueError:
            log.warning("store.bad_notification", payload=payload[:200])
            return
        self._notify_listeners(folders)

    def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="store-writer")

    async def close(self) -> None:
        """Finish every unit already handed in, anchor the audit head this store wrote
        (if it wrote any), then close the engines."""
        if self._writer is not None:
            await self._queue.put(None)
            await self._writer
            self._writer = None
        await self.anchor("stop")
        if self._thread_writer is not None:
            self._thread_writer.close()
        if self._thread_readers is not None:
            self._thread_readers.close()
        if self._listen_conn is not None:
            await self._listen_conn.close()
            self._listen_conn = None
        await self._read.dispose()
        if self._write is not self._read:
            await self._write.dispose()

    def reload_keys(self, storage: StorageConfig) -> None:
        """Re-read the message key files (`relay.store.rotation`): new blobs are sealed
        with the key file's key from now on; retired keys keep opening what they sealed."""
        from relay.store.crypto import KeyRing, read_key_file, read_retired_keys

        active = read_key_file(storage.key_file)
        if active is None:
            raise StoreError(f"{storage.key_file}: the message key file is missing")
        ring = KeyRing(
            active, read_retired_keys(storage.key_file), legacy_id=self.cipher.ring.legacy_id
        )
        self.cipher = BlobCipher(ring)

    def writer_state(self) -> WriterState:
        writer = self._writer
        started = self._batch_started
        return WriterState(
            alive=writer is not None and not writer.done(),
            waiting=self._queue.qsize(),
            busy_seconds=None if started is None else time.monotonic() - started,
        )

    async def ping(self) -> None:
        """One trivial read: raises if the database does not answer."""

        async def fn(conn: AsyncConnection) -> None:
            await conn.execute(text("SELECT 1"))

        await self.read(fn)

    def on_queued(self, listener: Callable[[], None]) -> None:
        """Call `listener` after each commit that put remote recipients in the queue."""
        self._queue_listeners.append(listener)

    def on_commit(self, listener: Callable[[frozenset[int]], None]) -> None:
        """Call `listener` with the ids of the folders each commit changed."""
        self._listeners.append(listener)

    def off_commit(self, listener: Callable[[frozenset[int]], None]) -> None:
        """Stop calling `listener` (a listener that a reload removed)."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    # --- the writer ---------------------------------------------------------------

    async def transact(self, unit: Unit[T], *, weight: int | None = None) -> T:
        """Run `unit` in the next group commit; return its result once durable.
        `weight`: the bytes the unit writes, if the caller knows them (`_Pending`)."""
        if self._writer is None:
            raise StoreError("store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(unit, future, weight=weight))
        return await future

    async def record(self, *events: AuditEvent) -> None:
        """Append audit events on their own (durable when this returns)."""

        async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
            ctx.audit(*events)

        await self.transact(unit, weight=0)

    def record_soon(self, *events: AuditEvent) -> asyncio.Future[None]:
        """Hand audit events to the writer without waiting for their commit.

        They are durable no later than any unit handed in after them (one writer,
        units committed in the order they came), so a caller that awaits the returned
        future before its next durable action (SMTP: before accepting a message)
        never has an action on disk without the event before it. A failure is logged
        here and raised to whoever awaits the future."""
        if self._writer is None:
            raise StoreError("store is closed")

        async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
            ctx.audit(*events)

        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_log_failure)
        self._queue.put_nowait(_Pending(unit, future, weight=0))
        return future

    async def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch: list[_Pending[Any]] = [first]
            while len(batch) < MAX_BATCH_UNITS and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            await self._commit_batch(batch)
            # Not held while waiting for the next unit: the last batch's messages
            # (ciphertext up to 25 MB each) would stay in memory until then.
            first = item = None
            batch.clear()
        await self._end_next_tx()

    async def _end_next_tx(self) -> None:
        """Roll back the transaction begun for a next batch that did not come."""
        if self._next_tx is None:
            return
        plain, _, raw = self._next_tx
        self._next_tx = None
        await _give_back(plain, raw)

    async def _commit_batch(self, batch: list[_Pending[Any]]) -> None:
        started = self._batch_started = time.monotonic()
        try:
            await self._commit_batch_timed(batch, started)
        finally:
            self._batch_started = None

    async def _commit_batch_timed(self, batch: list[_Pending[Any]], started: float) -> None:
        for attempt in range(RETRIES_ON_CONFLICT):
            try:
                try:
                    outcomes, written = await self._execute_batch(batch, isolate=False)
                except _UnitFailed:
                    # A unit raised: the whole transaction was rolled back. Run the
                    # batch again with each unit in its own savepoint, so only the
                    # failing one fails.
                    outcomes, written = await self._execute_batch(batch, isolate=True)
                break
            except Exception as exc:
                if _is_conflict(exc) and attempt + 1 < RETRIES_ON_CONFLICT:
                    log.warning("store.conflict_retry", attempt=attempt + 1)
                    await asyncio.sleep(0.01 * (attempt + 1))
                    continue
                self._fail(batch, exc)
                return
        else:  # pragma: no cover - the loop always breaks or returns
            return
        self.commits += 1
        self.metrics.committed(len(batch), time.monotonic() - started, (ev for _, ev in written))
        if written:
            self._written_head = (written[-1][0].seq, written[-1][0].hash)
        touched: set[int] = set()
        for item, (ok, value) in zip(batch, outcomes, strict=True):
            if ok:
                touched |= item.ctx.touched
            if not item.future.done():
                if ok:
                    item.future.set_result(value)
                else:
                    item.future.set_exception(value)
        for row, ev in written:
            audit_log.info(
                "audit",
                seq=row.seq,
                ts=row.ts,
                hash=row.hash,
                **{k: v for k, v in ev.to_record().items() if v is not None},
            )
        if touched:
            self._notify_listeners(frozenset(touched))

    def _notify_listeners(self, folders: frozenset[int]) -> None:
        for listener in self._listeners:
            try:
                listener(folders)
            except Exception:
                log.exception("store.listener_failed")

    async def _execute_batch(self, batch: list[_Pending[Any]], *, isolate: bool) -> _BatchOutcome:
        """One transaction for the batch, committed when this returns."""
        if self._thread_writer is not None:

            def run(conn: AsyncConnection, b: list[_Pending[Any]]) -> Any:
                return self._run_batch(conn, b, isolate=isolate)

            result: _BatchOutcome
            weight = _known_weight(batch)
            if weight is not None and weight <= LOOP_BATCH_BYTES:
                # SQLite, a small batch: its statements here, its COMMIT in the thread.
                result = await self._thread_writer.run_here(run, batch)
            else:
                # SQLite: the whole batch in the writer thread, one hop for all.
                result = await asyncio.get_running_loop().run_in_executor(
                    self._thread_writer.executor, self._thread_writer.run, run, batch
                )
            return result
        # PostgreSQL: the transaction is begun and ended on the driver, by this
        # writer, so that BEGIN and the audit head's lock go in one round trip;
        # SQLAlchemy runs in it without a transaction of its own (AUTOCOMMIT: it sends
        # no BEGIN or COMMIT, savepoints still work). When units are waiting at the
        # COMMIT, the next batch's BEGIN and lock go in the COMMIT's round trip, and
        # that batch starts in the transaction left open.
        head, self._head = self._head, None  # known again only if this batch commits
        if self._next_tx is not None:  # begun with the last COMMIT, which set the head
            (plain, conn, raw), self._next_tx = self._next_tx, None
        else:
            plain = await self._write.connect()
            try:
                conn = await plain.execution_options(isolation_level="AUTOCOMMIT")
                raw = await raw_connection(conn)
            except BaseException:
                await plain.close()
                raise
        try:
            if not raw.in_transaction():  # else begun by the last batch's COMMIT
                if head is None:
                    await raw.begin()
                    row = await raw.fetchone(self._sql.head_for_update, {})
                    if row is None:
                        raise StoreError("audit head missing: database not migrated")
                    head = (int(row[0]), str(row[1]))
                else:
                    await raw.begin(lock_head=True)
            assert head is not None  # read above, or kept by the batch that began this one
            outcomes, written = await self._run_batch(
                conn, batch, isolate=isolate, locked=(raw, *head)
            )
            begun = await raw.commit(then_begin=not self._queue.empty())
        except BaseException:
            await _give_back(plain, raw)
            raise
        if begun:
            self._next_tx = (plain, conn, raw)
        else:
            await _give_back(plain, raw)
        self._head = (written[-1][0].seq, written[-1][0].hash) if written else head
        return outcomes, written

    async def _run_batch(
        self,
        conn: AsyncConnection,
        batch: list[_Pending[Any]],
        *,
        isolate: bool,
        locked: tuple[Raw, int, str] | None = None,
    ) -> _BatchOutcome:
        """Inside one open transaction: every unit (in its own savepoint if `isolate`),
        then the audit rows of those that succeeded, chained after the locked head.

        Units almost never fail, and a savepoint costs two statements per unit, so the
        first run goes without; a failure raises _UnitFailed and the caller runs the
        batch again isolated."""
        outcomes: list[tuple[bool, Any]] = []
        written: list[tuple[AuditRow, AuditEvent]] = []
        raw, head_seq, head_hash = locked or await self._lock_head(conn)
        before = (head_seq, head_hash)
        accepted = None if isolate else _BatchAcceptances()
        for item in batch:
            item.ctx = TxContext(raw, accepted)
            try:
                if isolate:
                    async with conn.begin_nested():
                        result = await item.unit(conn, item.ctx)
                else:
                    result = await item.unit(conn, item.ctx)
            except Exception as exc:
                if _is_conflict(exc):
                    raise
                if not isolate:
                    raise _UnitFailed from exc
                outcomes.append((False, exc))
                continue
            outcomes.append((True, result))
            for ev in item.ctx.events:
                head_seq += 1
                row = self._audit_row(head_seq, head_hash, ev)
                head_hash = row.hash
                written.append((row, ev))
        tail = self._sql.tail  # PostgreSQL: the rows below in one statement
        rows = _TailRows()
        if accepted is not None and accepted.any:
            try:
                rows = await accepted.write(raw, self._sql, defer=tail is not None)
            except Exception as exc:
                if _is_conflict(exc):
                    raise
                raise _UnitFailed from exc  # run again unit by unit: who failed fails
            outcomes = [
                (ok, value.result if isinstance(value, _AcceptedRows) else value)
                for ok, value in outcomes
            ]
            accepted.clear()
        audit_rows = [
            {
                "seq": r.seq,
                "ts": r.ts,
                "action": r.action,
                "person": r.person,
                "box": r.box,
                "peer": r.peer,
                "data": r.data,
                "prev_hash": r.prev_hash,
                "hash": r.hash,
            }
            for r, _ in written
        ]
        if tail is not None:
            touched = sorted(
                {
                    fid
                    for item, (ok, _) in zip(batch, outcomes, strict=False)
                    if ok
                    for fid in item.ctx.touched
                }
            )
            # The NOTIFY reaches the other nodes' LISTEN at commit, never before
            # (PostgreSQL's semantics): their IMAP sessions then look for changes.
            payload = f"{self.node_id}:" + ",".join(map(str, touched)) if touched else None
            if rows.any or audit_rows or payload:
                args = tail.args(
                    [rows.blobs, rows.messages, rows.queue, audit_rows],
                    ((head_seq, head_hash), before) if written else None,
                    self.notify_channel,
                    payload,
                )
                try:
                    moved = await raw.tail(tail, args)
                except Exception as exc:
                    if _chain_taken(exc):
                        raise _HeadMoved from exc  # another writer took these numbers
                    if _is_conflict(exc) or not rows.any:
                        raise
                    raise _UnitFailed from exc  # acceptances' rows: unit by unit
                if written and moved:
                    raise _HeadMoved
            return outcomes, written
        if written:
            await raw.executemany(self._sql.insert_audit, audit_rows)
            await raw.execute(self._sql.set_head, {"head_seq": head_seq, "head_hash": head_hash})
        return outcomes, written

    def _fail(self, batch: list[_Pending[Any]], exc: BaseException) -> None:
        self.metrics.commit_failures.inc()
        log.error("store.commit_failed", units=len(batch), error=repr(exc))
        for item in batch:
            if not item.future.done():
                item.future.set_exception(StoreError("the transaction could not be committed"))

    async def _lock_head(self, conn: AsyncConnection) -> tuple[Raw, int, str]:
        """SQLite: the batch's DBAPI connection and the audit head, locked until
        commit: the writer's BEGIN IMMEDIATE has run (its `begin` event) and holds the
        one write lock, so the head is read raw. (PostgreSQL: `_execute_batch`.)"""
        raw = await raw_connection(conn)
        head = await raw.fetchone(self._sql.head, {})
        if head is None:
            raise StoreError("audit head missing: database not migrated")
        return raw, int(head[0]), str(head[1])

    def _audit_row(self, seq: int, prev_hash: str, ev: AuditEvent) -> AuditRow:
        rec = ev.to_record()
        ts = self.clock().astimezone(dt.UTC).isoformat(timespec="microseconds")
        data = canonical_json(
            {"request": rec["request"], "answer": rec["answer"], "details": rec["details"]}
        )
        digest = row_hash(
            prev_hash,
            key=self._chain_key(seq),
            seq=seq,
            ts=ts,
            action=ev.ACTION,
            person=ev.person,
            box=ev.box,
            peer=ev.peer,
            data=data,
        )
        return AuditRow(seq, ts, ev.ACTION, ev.person, ev.box, ev.peer, data, prev_hash, digest)

    def _chain_key(self, seq: int) -> bytes | None:
        """The HMAC key for row `seq`: None only for rows before the audit key existed."""
        if self.keyed_from is not None and seq >= self.keyed_from:
            if self.audit_key is None:
                raise StoreError("the audit chain is keyed but this store has no audit key")
            return self.audit_key
        return None

    async def anchor(self, reason: str) -> Anchor | None:
        """Append the newest audit head this store wrote to the anchor file and to the
        log, unless it is already anchored (relay.audit.anchors). Never raises: a
        failure is logged as an error (the trail is still written; only its outside
        proof is late)."""
        head = self._written_head
        if head is None or head == self._anchored_head or self.audit_key is None:
            return None
        path = self.anchor_file
        anchor = make_anchor(
            self.audit_key,
            ts=self.clock().astimezone(dt.UTC).isoformat(timespec="seconds"),
            seq=head[0],
            hash=head[1],
            keyed_from=self.keyed_from,
            key_id=key_id(self.audit_key),
            node=self.node_id,
            reason=reason,
        )
        if path is not None:
            try:
                await asyncio.to_thread(append_line, path, to_line(anchor))
            except OSError as exc:
                log.error("audit.anchor_failed", file=str(path), error=str(exc))
                return None
        self._anchored_head = head
        self.last_anchor = anchor
        audit_log.info(
            "audit.anchor", seq=anchor.seq, hash=anchor.hash, reason=reason, file=str(path)
        )
        return anchor

    # --- mailboxes and folders ----------------------------------------------------

    async def ensure_mailboxes(self, addresses: Iterable[str]) -> None:
        """Create the rows (and default folders) of boxes the config names.

        Boxes that leave the config keep their rows: a config edit never deletes mail.
        """
        wanted = sorted({a.lower() for a in addresses})

        async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
            now = self.clock()
            existing = {
                r.address: r.id
                for r in await conn.execute(select(t.mailboxes.c.address, t.mailboxes.c.id))
            }
            for address in wanted:
                box_id = existing.get(address)
                if box_id is None:
                    res = await conn.execute(
                        insert(t.mailboxes).values(address=address, created_at=now)
                    )
                    box_id = res.inserted_primary_key[0] if res.inserted_primary_key else None
                    assert box_id is not None
                names = {
                    r.name
                    for r in await conn.execute(
                        select(t.folders.c.name).where(t.folders.c.mailbox_id == box_id)
                    )
                }
                for name, special in DEFAULT_FOLDERS:
                    if name not in names:
                        await self.create_folder_row(conn, box_id, name, special)

        await self.transact(unit)

    async def create_folder_row(
        self, conn: AsyncConnection, box_id: int, name: str, special: str | None
    ) -> int:
        """Insert a folder of box `box_id`; its id. Inside the caller's transaction.

        UIDVALIDITY (RFC 3501 §2.3.1.1) must never repeat for a name whose UIDs start
        again: it is the creation second, but always above the box's newest value
        (`mailboxes.last_uidvalidity`, kept across deletions), so a folder deleted and
        created again within the same second still gets a new one.
        """
        now = int(self.clock().timestamp()) % 2**31
        following = t.mailboxes.c.last_uidvalidity + 1
        uidvalidity = (
            await conn.execute(
                update(t.mailboxes)
                .where(t.mailboxes.c.id == box_id)
                .values(last_uidvalidity=case((following > now, following), else_=now))
                .returning(t.mailboxes.c.last_uidvalidity)
            )
        ).scalar_one()  # one statement: concurrent creations in a box queue on its row
        res = await conn.execute(
            insert(t.folders).values(
                mailbox_id=box_id,
                name=name,
                uidvalidity=uidvalidity,
                uidnext=1,
                highestmodseq=1,
                recent_uid=1,
                special_use=special,
            )
        )
        folder_id = res.inserted_primary_key[0] if res.inserted_primary_key else None
        assert folder_id is not None
        return int(folder_id)

    async def folder_id(self, conn: AsyncConnection, box: str, folder: str) -> int:
        key = (box.lower(), folder)
        cached = self._folder_ids.get(key)
        if cached is not None:
            return cached
        row = (
            await conn.execute(
                select(t.folders.c.id)
                .select_from(t.folders.join(t.mailboxes))
                .where(and_(t.mailboxes.c.address == key[0], t.folders.c.name == folder))
            )
        ).one_or_none()
        if row is None:
            raise StoreError(f"no folder {folder!r} in box {box!r}")
        self._folder_ids[key] = int(row.id)
        return int(row.id)

    def forget_folder(self, box: str, folder: str) -> None:
        self._folder_ids.pop((box.lower(), folder), None)

    @staticmethod
    async def allocate_uid(conn: AsyncConnection, folder_id: int) -> tuple[int, int]:
        """Next UID and MODSEQ of a folder; the UPDATE locks the folder row until commit."""
        row = (
            await conn.execute(
                update(t.folders)
                .where(t.folders.c.id == folder_id)
                .values(
                    uidnext=t.folders.c.uidnext + 1,
                    highestmodseq=t.folders.c.highestmodseq + 1,
                )
                .returning(t.folders.c.uidnext, t.folders.c.highestmodseq)
            )
        ).one()
        return int(row.uidnext) - 1, int(row.highestmodseq)

    # --- acceptance ---------------------------------------------------------------

    async def accept(self, a: Acceptance) -> AcceptResult:
        """Blob, metadata, local deliveries, queue rows and audit event in ONE commit."""
        queue_id = a.queue_id or secrets.token_hex(8)
        blob_id = secrets.token_hex(16)
        size = len(a.raw)
        sealed: bytes | SealedStream
        if size >= LARGE_BLOB_BYTES:
            # sealed by the writer as it writes the row, a chunk at a time: the
            # message is never held sealed whole beside its plaintext (fastsql.pieces)
            sealed = self.cipher.seal_later(blob_id, a.raw)
        else:
            sealed = self.cipher.seal(blob_id, a.raw)
            if isinstance(a.raw, bytearray):
                a.raw.clear()  # the caller handed the buffer over: only the ciphertext stays
        sealed_meta = self.seal_meta(blob_id, a.meta)

        async def unit(conn: AsyncConnection, ctx: TxContext) -> AcceptResult | _AcceptedRows:
            before = a.after
            # Handed in before this unit, so in this batch (not done yet: committed
            # with it or not at all) or in an earlier one (done): then it must have
            # been committed, or this message would be on disk without it.
            if before is not None and before.done() and before.exception() is not None:
                raise StoreError("what this message comes after was not recorded")
            now = self.clock()
            raw = ctx.raw
            assert raw is not None  # set by the writer
            folders = [
                (box, await self.folder_id(conn, box, a.folder)) for box in a.local_recipients
            ]
            rows = _AcceptedRows(
                blob={
                    "id": blob_id,
                    "size": size,
                    "data": sealed,
                    "meta": sealed_meta,
                    "created_at": now,
                },
                folders=folders,
                message={
                    "blob_id": blob_id,
                    "internal_date": (a.internal_date or now).astimezone(dt.UTC),
                    "internal_offset": offset_minutes(a.internal_date or now),
                    "size": size,
                    "flags": a.flags,
                    "message_id": a.message_id,
                },
                queue=[
                    {
                        "queue_id": queue_id,
                        "blob_id": blob_id,
                        "sender": a.sender,
                        "recipient": rcpt,
                        "status": "queued",
                        "attempts": 0,
                        "created_at": now,
                        "next_attempt_at": now,
                        "message_id": a.message_id,
                        "person": a.person,
                        "box": a.box,
                        "delay_warned": False,
                    }
                    for rcpt in a.remote_recipients
                ],
                queue_id=queue_id,
            )
            for _, folder_id in folders:
                ctx.touch(folder_id)
            if a.in_same_transaction is not None:
                await a.in_same_transaction(conn, ctx)
            ctx.audit(a.audit(queue_id))
            if ctx.accepted is not None:
                ctx.accepted.pending.append(rows)
                return rows  # the writer puts the AcceptResult in its place
            # In its own savepoint (the batch is run again unit by unit): its rows now.
            alone = _BatchAcceptances()
            alone.pending.append(rows)
            await alone.write(raw, self._sql)
            assert rows.result is not None
            return rows.result

        try:
            result = cast(AcceptResult, await self.transact(unit, weight=size))
        except asyncio.CancelledError:
            raise  # the writer may be sealing it still: not emptied under its feet
        except Exception:
            _release(a.raw)
            raise
        # Committed (or failed): the writer is done with the plaintext, retries
        # included (a failed batch is run again unit by unit before any answer).
        _release(a.raw)
        if result.queued:
            for listener in self._queue_listeners:
                listener()
        return result

    # --- reading ------------------------------------------------------------------

    async def read(
        self, fn: Callable[[AsyncConnection], Coroutine[Any, Any, T]], *, point: bool = False
    ) -> T:
        """Run `fn(conn)` in one read transaction (a consistent view) and return its
        result. `fn` must await nothing but `conn`: on SQLite it runs to completion on
        a synchronous connection, in a reader thread (one hand-off for the whole read
        instead of several per statement through aiosqlite).

        `point`: a read of a few rows found by key (a folder list, the rows of a few
        messages). On SQLite it runs on the calling thread, the event loop's: it takes
        tens of microseconds from the page cache, less than handing it to a thread and
        waking the loop again, and the loop does not wait for the GIL while the reader
        runs SQLAlchemy's Python. A read that may scan (a whole folder's index, a
        search's bodies) is never a point read: it would hold every session up. A
        point read is one statement: on PostgreSQL it runs outside a transaction (one
        round trip to the server instead of three, BEGIN and COMMIT around it).

        The view is one snapshot on both engines: SQLite's read transaction keeps the
        database as its first read found it (WAL); on PostgreSQL the transaction is
        REPEATABLE READ, READ ONLY. The default there, READ COMMITTED, takes a new
        snapshot at every statement, so a read of several statements (STATUS's counts,
        a folder and its rows) could mix what was before and after a commit: UNSEEN
        computed from two different states of the box."""
        readers = self._thread_readers
        if readers is not None:
            if point:
                return readers.run_here(fn)
            result: T = await asyncio.get_running_loop().run_in_executor(
                readers.executor, readers.run, fn
            )
            return result
        if point:
            async with self._read.connect() as conn:
                alone = await conn.execution_options(isolation_level="AUTOCOMMIT")
                return await fn(alone)
        async with self._read.connect() as conn:
            # A read-only REPEATABLE READ transaction never fails to serialize; it
            # costs the same BEGIN and COMMIT as READ COMMITTED.
            snapshot = await conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            async with snapshot.begin():
                return await fn(snapshot)

    def seal_meta(self, blob_id: str, meta: dict[str, Any]) -> bytes:
        return self.cipher.seal(blob_id + ":meta", json.dumps(meta, separators=(",", ":")).encode())

    def open_meta(self, blob_id: str, sealed: bytes) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.cipher.open(blob_id + ":meta", sealed))
        return value

    async def read_blob(self, blob_id: str) -> bytes:
        async with self._read.connect() as conn:
            row = (
                await conn.execute(select(t.blobs.c.data).where(t.blobs.c.id == blob_id))
            ).one_or_none()
        if row is None:
            raise StoreError(f"no blob {blob_id}")
        return self.cipher.open(blob_id, bytes(row.data))

    async def messages(self, box: str, folder: str = "INBOX") -> list[StoredMessage]:
        """Every message of a folder in UID order, decrypted (tests, export, small boxes)."""
        async with self._read.connect() as conn:
            folder_id = await self.folder_id(conn, box, folder)
            rows = (
                await conn.execute(
                    select(t.messages, t.blobs.c.data, t.blobs.c.meta)
                    .join(t.blobs, t.blobs.c.id == t.messages.c.blob_id)
                    .where(t.messages.c.folder_id == folder_id)
                    .order_by(t.messages.c.uid)
                )
            ).all()
        return [
            StoredMessage(
                folder_id=r.folder_id,
                uid=r.uid,
                modseq=r.modseq,
                flags=r.flags,
                size=r.size,
                message_id=r.message_id,
                internal_date=_aware(r.internal_date),
                raw=self.cipher.open(r.blob_id, bytes(r.data)),
                meta=self.open_meta(r.blob_id, bytes(r.meta)),
            )
            for r in rows
        ]

    async def queue_rows(self) -> list[dict[str, Any]]:
        async with self._read.connect() as conn:
            rows = (await conn.execute(select(t.queue).order_by(t.queue.c.id))).mappings().all()
        return [dict(r) for r in rows]

    async def audit_head(self) -> tuple[int, str]:
        head = await self.audit_head_row()
        if head is None:
            raise StoreError("the audit_head row is missing (deleted?)")
        return head[0], head[1]

    async def audit_head_row(self) -> tuple[int, str, int | None] | None:
        """(seq, hash, keyed_from) of the audit head, or None if its row is missing."""
        async with self._read.connect() as conn:
            row = (
                await conn.execute(
                    select(t.audit_head.c.seq, t.audit_head.c.hash, t.audit_head.c.keyed_from)
                )
            ).one_or_none()
        if row is None:
            return None
        keyed_from = None if row.keyed_from is None else int(row.keyed_from)
        return int(row.seq), str(row.hash), keyed_from

    async def verify_audit(self) -> VerifyResult:
        """Check the whole audit chain with the audit key (relay.audit.chain) and against
        every anchor written outside the database (relay.audit.anchors)."""
        head = await self.audit_head_row()
        rows = await self.audit_rows()
        kinds = {r.kind for r in await self.read(_registered_keys)}
        path = self.anchor_file
        lines = await asyncio.to_thread(read_lines, path) if path is not None else None
        anchors, problems = parse(lines or [], self.audit_key)
        if head is None:
            result = VerifyResult(
                False,
                len(rows),
                None,
                "the audit_head row is missing (deleted?): the newest rows cannot be "
                "checked against the head",
            )
            keyed_from = anchors[-1].keyed_from if anchors else self.keyed_from
        else:
            seq, head_hash, keyed_from = head
            result = verify(
                rows, head_seq=seq, head_hash=head_hash, key=self.audit_key, keyed_from=keyed_from
            )
        contradictions = check(
            anchors,
            {r.seq: r.hash for r in rows},
            rows=rows[-1].seq if rows else 0,
            keyed_from=keyed_from,
            path=path or "",
        )
        return judge(
            result,
            anchors=anchors,
            contradictions=contradictions,
            problems=problems,
            anchor_file=path if lines is not None else None,
            keyed_from=keyed_from,
            audit_key_registered=KeyKind.AUDIT in kinds,
            rows=len(rows),
        )

    async def audit_rows(self, flt: AuditFilter | None = None) -> list[AuditRow]:
        """Audit rows in sequence order (newest first if `flt.newest_first`), filtered."""
        flt = flt or AuditFilter()
        order = t.audit.c.seq.desc() if flt.newest_first else t.audit.c.seq
        stmt = select(t.audit).order_by(order)
        if flt.box is not None:
            stmt = stmt.where(t.audit.c.box == flt.box.lower())
        if flt.person is not None:
            stmt = stmt.where(t.audit.c.person == flt.person)
        if flt.action is not None:
            if flt.action.endswith("."):
                stmt = stmt.where(t.audit.c.action.startswith(flt.action))
            else:
                stmt = stmt.where(t.audit.c.action == flt.action)
        if flt.since is not None:
            stmt = stmt.where(t.audit.c.ts >= _iso(flt.since))
        if flt.until is not None:
            stmt = stmt.where(t.audit.c.ts < _iso(flt.until))
        if flt.message_id is not None:
            # The JSON text as the chain writes it (relay.audit.chain): a cheap filter
            # in SQL, then the exact test on the parsed details below.
            quoted = json.dumps(flt.message_id, ensure_ascii=False)
            stmt = stmt.where(t.audit.c.data.contains(quoted, autoescape=True))
        if flt.limit is not None and flt.message_id is None:
            stmt = stmt.limit(flt.limit)
        async with self._read.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        found = [
            AuditRow(r.seq, r.ts, r.action, r.person, r.box, r.peer, r.data, r.prev_hash, r.hash)
            for r in rows
        ]
        if flt.message_id is not None:
            found = [r for r in found if _names_message(r.data, flt.message_id)]
            if flt.limit is not None:
                found = found[: flt.limit]
        return found

    async def audit_knows(self, *, box: str | None = None, person: str | None = None) -> bool:
        """Whether the store has ever seen this box (a mailbox row or an audit row) or
        this person (an audit row): `audit show --box` of a name never seen is a typo."""
        checks = []
        if box is not None:
            checks.append(select(t.mailboxes.c.address).where(t.mailboxes.c.address == box.lower()))
            checks.append(select(t.audit.c.seq).where(t.audit.c.box == box.lower()))
        if person is not None:
            checks.append(select(t.audit.c.seq).where(t.audit.c.person == person))
        async with self._read.connect() as conn:
            for stmt in checks:
                if (await conn.execute(stmt.limit(1))).first() is not None:
                    return True
        return False

    # --- trust space (ANS whitelist) --------------------------------------------

    async def trust_space_lookup(self, domain: str) -> TrustEntry | None:
        """Every inbound MAIL and remote RCPT asks: one reader hand-off (see `read`)."""

        async def read(conn: AsyncConnection) -> TrustEntry | None:
            row = (
                await conn.execute(
                    select(t.trust_space).where(t.trust_space.c.domain == domain.lower())
                )
            ).one_or_none()
            if row is None:
                return None
            return TrustEntry(
                row.domain, row.name, row.certificate_dn, row.description, row.updated
            )

        return await self.read(read)

    async def trust_space_dns(self) -> list[str]:
        async with self._read.connect() as conn:
            rows = (await conn.execute(select(t.trust_space.c.certificate_dn))).all()
        return [r.certificate_dn for r in rows if r.certificate_dn]

    async def trust_space_entries(self) -> list[TrustEntry]:
        async with self._read.connect() as conn:
            rows = (
                await conn.execute(select(t.trust_space).order_by(t.trust_space.c.domain))
            ).all()
        return [
            TrustEntry(r.domain, r.name, r.certificate_dn, r.description, r.updated) for r in rows
        ]

    async def trust_space_replace(self, entries: Sequence[TrustEntry], event: AuditEvent) -> None:
        """Replace the whole whitelist with `entries` (one transaction, audited)."""

        async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
            now = self.clock()
            await conn.execute(delete(t.trust_space))
            if entries:
                await conn.execute(
                    insert(t.trust_space),
                    [
                        {
                            "domain": e.domain,
                            "name": e.name,
                            "certificate_dn": e.certificate_dn,
                            "description": e.description,
                            "updated": e.updated,
                            "imported_at": now,
                        }
                        for e in entries
                    ],
                )
            ctx.audit(event)

        await self.transact(unit)

    async def execute_admin(self, sql: str, params: dict[str, Any] | None = None) -> None:
        """Raw SQL for tests that tamper with the database on purpose."""
        async with self._write.connect() as conn, conn.begin():
            await conn.execute(text(sql), params or {})

    async def sql_scalar(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        async with self._read.connect() as conn:
            return (await conn.execute(text(sql), params or {})).scalar()


async def _registered_keys(conn: AsyncConnection) -> list[RegisteredKey]:
    return await registered_keys(conn)


def _iso(value: dt.datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("timezone-aware datetime required")
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def offset_minutes(value: dt.datetime) -> int:
    """Minutes east of UTC of an aware datetime (the `internal_offset` column)."""
    offset = value.utcoffset()
    if offset is None:
        raise ValueError("naive datetime")
    return int(offset.total_seconds()) // 60


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite gives naive datetimes back; we only ever store UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


async def _settle_keys(
    engine: AsyncEngine, storage: StorageConfig, *, may_create: bool, now: dt.datetime
) -> tuple[OpenedKeys, int | None]:
    """`relay.store.keys.settle` in its own transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL:
    an advisory lock), so that two processes opening a new store register one key."""
    from relay.store.keys import settle

    async with engine.connect() as conn, conn.begin():
        if engine.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_KEYS_LOCK})
        opened = await settle(conn, storage, may_create=may_create, now=now)
        keyed_from = await conn.scalar(select(t.audit_head.c.keyed_from))
    return opened, None if keyed_from is None else int(keyed_from)


_PG_KEYS_LOCK = 0x6D73736B  # "mssk": serialises key registration across nodes


def _make_engines(storage: StorageConfig) -> tuple[AsyncEngine, AsyncEngine]:
    url = storage.url
    if url.startswith("sqlite"):
        # Readers and the one writer use separate engines: the writer takes the write
        # lock at BEGIN (IMMEDIATE) so a batch never fails half-way on SQLITE_BUSY.
        connect = {"async_creator_fn": _aiosqlite_connect}
        read = create_async_engine(url, connect_args=connect)
        write = create_async_engine(url, connect_args=connect, pool_size=1, max_overflow=0)
        _sqlite_setup(read, begin="BEGIN")
        _sqlite_setup(write, begin="BEGIN IMMEDIATE")
        return read, write
    connect_args: dict[str, Any] = {}
    if storage.schema:
        connect_args["server_settings"] = {"search_path": storage.schema}
    engine = create_async_engine(url, connect_args=connect_args, pool_size=10, max_overflow=10)
    return engine, engine


async def _aiosqlite_connect(*args: Any, **kwargs: Any) -> Any:
    """aiosqlite's connect, which on failure waits for the connection's worker thread
    to end before raising. Since aiosqlite 0.22 a failed connect queues the thread's
    stop without awaiting it: a command that then fails fast (`audit show` before the
    first `serve`) closes its loop first, and the thread prints a RuntimeError
    traceback ("Event loop is closed") under the command's one-line error."""
    import aiosqlite

    connection = aiosqlite.connect(*args, **kwargs)
    # The connection holds its thread since 0.22 and was the thread before.
    thread = cast(threading.Thread, getattr(connection, "_thread", connection))
    thread.daemon = True  # as SQLAlchemy's own connect does: never hold up exit
    try:
        return await connection
    except BaseException:
        await asyncio.shield(asyncio.to_thread(thread.join, 5.0))
        raise


def _sqlite_setup(engine: AsyncEngine | Engine, *, begin: str) -> None:
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, emit BEGIN, so SAVEPOINT works (SQLAlchemy
        # docs, "Serializable isolation / Savepoints / Transactional DDL" for pysqlite).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so a committed message survives a
        # power cut. NORMAL would only survive a process crash. Never NORMAL here.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: SyncConnection) -> None:
        conn.exec_driver_sql(begin)


def _known_weight(batch: list[_Pending[Any]]) -> int | None:
    """The bytes the batch's units write, None if one of them did not say."""
    total = 0
    for item in batch:
        if item.weight is None:
            return None
        total += item.weight
    return total


async def _give_back(plain: AsyncConnection, raw: Raw) -> None:
    """Give the writer's PostgreSQL connection back to the pool out of any transaction,
    or close it for good if it cannot be brought out of one."""
    if not await raw.rollback():
        await plain.invalidate()  # never back to the pool mid-transaction
    await plain.close()


class _ThreadWriter:
    """SQLite's writer: one thread with a synchronous connection (the stdlib driver).

    Going through aiosqlite costs three or four thread hand-offs per statement; a batch
    of acceptances is a few dozen statements. Here the whole batch, units included,
    runs in this thread: the units' coroutines only ever await the database, which
    `_ThreadConnection` answers synchronously, so `_drive` runs them to completion
    without an event loop.
    """

    def __init__(self, async_url: str) -> None:
        url = async_url.replace("sqlite+aiosqlite:", "sqlite+pysqlite:", 1)
        self.engine = create_engine(
            url, pool_size=1, max_overflow=0, connect_args={"check_same_thread": False}
        )
        _sqlite_setup(self.engine, begin="BEGIN IMMEDIATE")
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")

    def run(self, batch_fn: Callable[[AsyncConnection, Any], Any], batch: Any) -> Any:
        with self.engine.connect() as conn, conn.begin():
            adapter = cast(AsyncConnection, _ThreadConnection(conn))
            return _drive(batch_fn(adapter, batch))

    async def run_here(self, batch_fn: Callable[[AsyncConnection, Any], Any], batch: Any) -> Any:
        """The batch's statements on the event loop's thread, its COMMIT (the fsync)
        in this writer's thread.

        The thread holds the GIL for the batch's Python and gives it back at each
        statement (the driver releases it around SQLite's calls); with the event loop
        busy, each time it wants it back it waits (py-spy and timings: 0.8 ms CPU a
        batch took 1.7 ms, and 1 ms more went in the hand-offs). Statements on the
        loop are short for small units (`LOOP_BATCH_BYTES`); the COMMIT, which waits
        for the disk, is not, and stays here. The commit and the connection's return
        are one job of the thread: if the caller is cancelled meanwhile, the
        connection is still never used by two threads at once."""
        conn = self.engine.connect()
        try:
            tx = conn.begin()
            out = _drive(batch_fn(cast(AsyncConnection, _ThreadConnection(conn)), batch))
        except BaseException:
            conn.close()  # rolls back
            raise

        def commit() -> None:
            with conn:
                tx.commit()

        await asyncio.get_running_loop().run_in_executor(self.executor, commit)
        return out

    def pragmas(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return {
                "journal_mode": conn.exec_driver_sql("PRAGMA journal_mode").scalar(),
                "synchronous": conn.exec_driver_sql("PRAGMA synchronous").scalar(),
            }

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.engine.dispose()


class _ThreadReaders:
    """SQLite's readers for `Store.read`: a few threads, each read one transaction on a
    synchronous connection (deferred BEGIN: a WAL snapshot, never the write lock)."""

    def __init__(self, async_url: str, threads: int) -> None:
        url = async_url.replace("sqlite+aiosqlite:", "sqlite+pysqlite:", 1)
        self.engine = create_engine(
            url, pool_size=threads, max_overflow=0, connect_args={"check_same_thread": False}
        )
        _sqlite_setup(self.engine, begin="BEGIN")
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="store-reader")
        # Point reads, on the event loop's thread: a connection of their own, so that
        # they never wait for one of the threads' to come back to the pool.
        self.here = create_engine(
            url, pool_size=1, max_overflow=0, connect_args={"check_same_thread": False}
        )
        _sqlite_setup(self.here, begin="BEGIN")

    def run(self, fn: Callable[[AsyncConnection], Coroutine[Any, Any, T]]) -> T:
        with self.engine.connect() as conn, conn.begin():
            return _drive(fn(cast(AsyncConnection, _ThreadConnection(conn))))

    def run_here(self, fn: Callable[[AsyncConnection], Coroutine[Any, Any, T]]) -> T:
        with self.here.connect() as conn, conn.begin():
            return _drive(fn(cast(AsyncConnection, _ThreadConnection(conn))))

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.engine.dispose()
        self.here.dispose()


class _ThreadConnection:
    """The part of AsyncConnection that units use, answered by a sync Connection."""

    def __init__(self, conn: SyncConnection) -> None:
        self.sync_connection = conn
        self.dialect = conn.dialect

    async def execute(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> Any:
        return self.sync_connection.execute(
            statement, parameters, execution_options=execution_options
        )

    async def scalar(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> Any:
        return self.sync_connection.scalar(
            statement, parameters, execution_options=execution_options
        )

    async def scalars(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> Any:
        return self.sync_connection.scalars(
            statement, parameters, execution_options=execution_options
        )

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> Any:
        return self.sync_connection.exec_driver_sql(statement, parameters)

    async def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return fn(self.sync_connection, *args, **kwargs)

    def begin_nested(self) -> _Savepoint:
        return _Savepoint(self.sync_connection)


class _Savepoint:
    def __init__(self, conn: SyncConnection) -> None:
        self._conn = conn

    async def __aenter__(self) -> Any:
        self._tx = self._conn.begin_nested()
        return self._tx

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self._tx.commit()
        else:
            self._tx.rollback()


def _drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (it only awaits `_ThreadConnection`)."""
    try:
        coro.send(None)
    except StopIteration as done:
        value: T = done.value
        return value
    coro.close()
    raise StoreError("a store unit awaited something other than the database")


async def check_durability_settings(store: Store) -> dict[str, Any]:
    """The settings the durability promise rests on, as the database reports them."""
    if store._thread_writer is not None:
        # The writer's own connection: it is the one whose commits must be durable.
        writer = store._thread_writer
        settings: dict[str, Any] = await asyncio.get_running_loop().run_in_executor(
            writer.executor, writer.pragmas
        )
        return settings
    return {
        "fsync": await store.sql_scalar("SHOW fsync"),
        "synchronous_commit": await store.sql_scalar("SHOW synchronous_commit"),
    }


__all__: Sequence[str] = (
    "DEFAULT_FOLDERS",
    "AcceptResult",
    "Acceptance",
    "AuditFilter",
    "Delivery",
    "Store",
    "StoredMessage",
    "TrustEntry",
    "TxContext",
    "check_durability_settings",
)
