"""Every SQL statement the IMAP server needs, over the `Store`.

Reads go through `Store.read` (one read transaction each); every change is a unit
handed to the group-committing writer, with its audit event in the same transaction and
the folders it changed marked (`ctx.touch`), so IDLE sessions hear of it after the commit.

MODSEQ (RFC 7162): each folder carries `highestmodseq`; a change to a folder takes the
next value and stamps it on every message it changed (new message, flag change) and on
every UID it removed (table `expunged`). "What changed since n" is then two indexed
queries, which is how sessions learn of each other's work.

\\Seen is stored in `messages.flags` for boxes with shared \\Seen and in the `seen`
table (one row per person and message) for boxes with per-person \\Seen; callers pass
`person` for the latter and always see a message's flags as that person does.

Gateway mode: a box hosted at an MSSanté operator (`upstream_boxes`, enabled) is served
exactly like a local one, and every change written here to such a box also writes a
row of `upstream_journal` in the same transaction (`_journal`): flags (as added and
removed flags, per-person \\Seen excepted), expunges, appends, copies and moves,
folder creation, renaming and deletion. `relay.upstream` replays the journal to the
operator in order. No IMAP handler knows about it.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import secrets
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Integer,
    Text,
    TypeDecorator,
    and_,
    any_,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.audit.events import AuditEvent
from relay.bounded import Bounded
from relay.errors import StoreError
from relay.message.analysis import Envelope, MessageMeta, headers_from_json
from relay.store import schema as t
from relay.store.fastsql import MESSAGE_COLUMNS, Prepared, Raw, insert_of, prepare, raw_connection
from relay.store.rawcache import RawCache
from relay.store.store import Store, TxContext, offset_minutes

SEEN = "\\Seen"
DELETED = "\\Deleted"
# Above this many UIDs a lookup reads the UID range and filters, instead of IN (...).
_IN_LIMIT = 500
# What a unit that changes messages' rows says it writes (`Store.transact`'s weight):
# about this much a message (its row's flags and MODSEQ, a \Seen row, a journal entry).
ROW_WEIGHT = 64
# At most this many rows by key make a point read (`Store.read`), run on the event
# loop's thread on SQLite; with their bytes, fewer (each may be megabytes).
POINT_ROWS = 64
POINT_RAW_ROWS = 8
_META_CACHE = 50_000  # decrypted metadata kept in memory (a few KB each)
# Decrypted messages kept in memory after a FETCH (relay.store.rawcache): letters
# only, 16 MiB in all.
RAW_CACHE_BYTES = 16 * 1024 * 1024
RAW_CACHE_LARGEST = 256 * 1024
# FETCH rows (blob, size, dates) shared by the sessions, about 300 bytes each.
_ROW_CACHE = 50_000


class _Bumped(NamedTuple):
    """A folder's bump (`MailStore._bump`): its new MODSEQ, the first of the UIDs taken,
    its UIDVALIDITY, and (operator's box, folder name) when its box is mirrored."""

    modseq: int
    first_uid: int
    uidvalidity: int
    mirror: tuple[str, str] | None


def _bumped(row: Sequence[Any], uids: int) -> _Bumped:
    """A row of _BUMP (or _BUMP_BY_NAME) as a `_Bumped`."""
    modseq, uidnext, uidvalidity, name, mirrored = row[:5]
    return _Bumped(
        int(modseq),
        int(uidnext) - uids,
        int(uidvalidity),
        (str(mirrored), str(name)) if mirrored is not None else None,
    )


class FolderMissing(StoreError):
    """The folder does not exist (any more)."""


class FolderExists(StoreError):
    """A folder of that name already exists."""


@dataclass(frozen=True, slots=True)
class FolderInfo:
    id: int
    box: str
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: str | None
    recent_uid: int = 1  # RFC 3501 §2.3.2: messages from this UID on are still \Recent


class Flagged(NamedTuple):
    """A message's number-independent state: UID, MODSEQ and flags as a person sees them.
    A named tuple: a folder index builds 100,000 of them, twice as fast as a dataclass."""

    uid: int
    modseq: int
    flags: frozenset[str]


# A message as `relay.store.folderindex` keeps it: (uid, modseq, flags as stored, size).
IndexRow = tuple[int, int, str, int]


@dataclass(frozen=True, slots=True)
class FolderRead:
    """One read of a folder for its index: the head (read first), the messages, the
    per-person \\Seen rows (uid, person) of those messages, the removals (uid, modseq)."""

    folder: FolderInfo
    rows: list[IndexRow]
    seen: list[tuple[int, str]]
    gone: list[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class MessageRow:
    """What FETCH needs besides flags, for one message."""

    uid: int
    blob_id: str
    size: int
    internal_date: dt.datetime
    message_id: str | None


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed in a folder after a MODSEQ: changed or new messages, removed UIDs."""

    highestmodseq: int
    uidnext: int
    changed: tuple[Flagged, ...]
    expunged: tuple[int, ...]
    # (uid, modseq of its removal), in UID order: what a session holds back until it
    # may announce the removal (RFC 3501 §7.4.1).
    expunged_at: tuple[tuple[int, int], ...] = ()
    recent_uid: int = 1  # the folder's \Recent watermark when this was read


@dataclass(frozen=True, slots=True)
class FolderStatus:
    messages: int
    recent: int
    unseen: int
    uidnext: int
    uidvalidity: int
    highestmodseq: int
    size: int
    deleted: int  # messages with \Deleted (RFC 9051 §6.3.11 STATUS DELETED)


@dataclass(frozen=True, slots=True)
class StoreResult:
    """STORE outcome: the messages changed (with their new state), and the UIDs left
    alone because they changed after UNCHANGEDSINCE (RFC 7162 §3.1.3)."""

    changed: tuple[Flagged, ...]
    modified: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Appended:
    """One message to append: its bytes, their metadata, flags and internal date."""

    raw: bytes
    meta: MessageMeta
    flags: frozenset[str]
    internal_date: dt.datetime


@dataclass(frozen=True, slots=True)
class CopyResult:
    uidvalidity: int
    source_uids: tuple[int, ...]
    dest_uids: tuple[int, ...]
    message_ids: tuple[str, ...]


def parse_flags(value: str) -> frozenset[str]:
    return frozenset(value.split())


def format_flags(flags: Iterable[str]) -> str:
    return " ".join(sorted(set(flags)))


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite gives naive datetimes back; only UTC is ever stored.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def internal_date(instant: dt.datetime, offset: int) -> dt.datetime:
    """A stored INTERNALDATE (instant, zone offset) as the aware datetime it was given
    as: RFC 3501 §6.3.11 keeps both the instant and the zone of APPEND's date-time."""
    zone = dt.timezone(dt.timedelta(minutes=offset)) if offset else dt.UTC
    return _aware(instant).astimezone(zone)


def apply_mode(current: frozenset[str], mode: str, flags: frozenset[str]) -> frozenset[str]:
    """RFC 3501 §6.4.6: FLAGS replaces, +FLAGS adds, -FLAGS removes."""
    if mode == "FLAGS":
        return flags
    if mode == "+FLAGS":
        return current | flags
    return current - flags


class MailStore:
    """IMAP data access: folders, snapshots, flags, copies, appends, subscriptions."""

    def __init__(self, store: Store) -> None:
        # Reads go through `Store.read`: one transaction each, never behind the writer
        # (SQLite WAL; on SQLite in a reader thread without aiosqlite's hand-offs).
        self.store = store
        self._meta_cache: Bounded[str, MessageMeta] = Bounded(_META_CACHE)
        self.raw_cache = RawCache(RAW_CACHE_BYTES, RAW_CACHE_LARGEST)
        # (box, UIDVALIDITY, UID) -> row: a UID names one message for as long as its
        # UIDVALIDITY lasts, and a box never gives a UIDVALIDITY twice (not the folder
        # id: SQLite gives a deleted folder's id to the next folder created).
        self._row_cache: Bounded[tuple[str, int, int], MessageRow] = Bounded(_ROW_CACHE)
        # Statements compiled once: the index's big read (by dialect), the folder list.
        self._prepared: dict[str, Prepared] = {}
        # The writer units' statements, compiled for the store's dialect on first use.
        self._sql: _Statements | None = None

    # --- folders ------------------------------------------------------------------

    async def folders(self, boxes: Sequence[str]) -> list[FolderInfo]:
        """Every folder of the given boxes, by box then name."""
        if not boxes:
            return []
        # LIST asks at every call: statements prepared once, straight from the driver
        # (SQLAlchemy's building, or expanding an IN list, costs more than running it).
        return await self.store.read(
            self._folders_of(sorted({b.lower() for b in boxes})), point=True
        )

    def _folders_of(
        self, boxes: list[str]
    ) -> Callable[[AsyncConnection], Coroutine[Any, Any, list[FolderInfo]]]:
        async def read(conn: AsyncConnection) -> list[FolderInfo]:
            raw = await raw_connection(conn)
            if conn.dialect.name == "postgresql":
                # one statement for all the boxes (an array parameter); the point read
                # is then one round trip
                rows = await raw.fetchall(
                    self._statement("folders_of_boxes", conn.dialect), {"boxes": boxes}
                )
                return [_folder(_FolderRow(*r)) for r in rows]
            stmt = self._statement("folders_of_box", conn.dialect)
            out: list[FolderInfo] = []
            for box in boxes:
                out += [_folder(_FolderRow(*r)) for r in await raw.fetchall(stmt, {"address": box})]
            return out

        return read

    def _statement(self, name: str, dialect: Dialect) -> Prepared:
        """The read `_PREPARED_READS[name]`, compiled for the store's dialect once."""
        stmt = self._prepared.get(name)
        if stmt is None:
            stmt = self._prepared[name] = prepare(_PREPARED_READS[name], dialect)
        return stmt

    async def folder(self, box: str, name: str) -> FolderInfo | None:
        return await self.store.read(lambda conn: self._find_folder(conn, box, name), point=True)

    async def _find_folder(self, conn: AsyncConnection, box: str, name: str) -> FolderInfo | None:
        row = await (await raw_connection(conn)).fetchone(
            self._statement("folder_by_name", conn.dialect), {"address": box.lower(), "name": name}
        )
        return _folder(_FolderRow(*row)) if row is not None else None

    # --- reading a folder -----------------------------------------------------------

    def _flag_query(self, folder_id: int, person: str | None) -> Any:
        cols = [t.messages.c.uid, t.messages.c.modseq, t.messages.c.flags]
        if person is None:
            return select(*cols).where(t.messages.c.folder_id == folder_id)
        return (
            select(*cols, t.seen.c.person)
            .select_from(
                t.messages.outerjoin(
                    t.seen,
                    and_(t.seen.c.message_id == t.messages.c.id, t.seen.c.person == person),
                )
            )
            .where(t.messages.c.folder_id == folder_id)
        )

    @staticmethod
    def _flagged(row: Any, person: str | None) -> Flagged:
        flags = parse_flags(row.flags)
        if person is not None:
            flags = flags - {SEEN} | ({SEEN} if row.person is not None else frozenset())
        return Flagged(int(row.uid), int(row.modseq), flags)

    async def snapshot(
        self, box: str, name: str, person: str | None
    ) -> tuple[FolderInfo, list[Flagged]]:
        """The folder and all its messages in UID order, as `person` sees their flags
        (`person` None: shared \\Seen). One read transaction: a consistent view."""

        async def read(conn: AsyncConnection) -> tuple[FolderInfo, Sequence[Any]]:
            folder = await self._folder_in(conn, box, name)
            rows = (
                await conn.execute(self._flag_query(folder.id, person).order_by(t.messages.c.uid))
            ).all()
            return folder, rows

        folder, rows = await self.store.read(read)
        return folder, [self._flagged(r, person) for r in rows]

    async def changes(self, folder_id: int, since: int, person: str | None) -> Changes:
        """Messages changed or added, and UIDs expunged, with MODSEQ above `since`."""

        async def read(conn: AsyncConnection) -> tuple[Any, Sequence[Any], Sequence[Any]]:
            params = {"folder_id": folder_id, "since": since, "person": person}
            head = (await conn.execute(_HEAD, params)).one_or_none()
            if head is None:
                raise FolderMissing("folder deleted")
            rows = (await conn.execute(_changed_stmt(person is not None), params)).all()
            gone = (await conn.execute(_GONE, params)).all()
            return head, rows, gone

        head, rows, gone = await self.store.read(read)
        return Changes(
            highestmodseq=int(head.highestmodseq),
            uidnext=int(head.uidnext),
            changed=tuple(self._flagged(r, person) for r in rows),
            expunged=tuple(sorted(int(r.uid) for r in gone)),
            expunged_at=tuple(sorted((int(r.uid), int(r.modseq)) for r in gone)),
            recent_uid=int(head.recent_uid),
        )

    async def index_read(self, folder_id: int, since: int | None) -> FolderRead:
        """A folder for its in-memory index (`relay.store.folderindex`): everything
        (`since` None), or what has a MODSEQ above `since`. The head comes first, so
        a commit between the statements is read again next time, never missed."""
        params = {"folder_id": folder_id, "since": since if since is not None else -1}
        if since is not None and self.store.dialect == "postgresql":
            return await self.store.read(self._index_delta(params), point=True)

        async def read(conn: AsyncConnection) -> FolderRead:
            head = (await conn.execute(_FOLDER_BY_ID, params)).one_or_none()
            if head is None:
                raise FolderMissing("folder deleted")
            # 100,000 rows: straight from the driver (SQLAlchemy's rows cost more than
            # the query), in the transaction the head's read began.
            raw = await raw_connection(conn)
            rows = await raw.fetchall(self._statement("index_rows", conn.dialect), params)
            seen = (await conn.execute(_INDEX_SEEN, params)).all()
            gone = (await conn.execute(_GONE, params)).all() if since is not None else []
            return FolderRead(
                folder=_folder(head),
                rows=rows,
                seen=[(int(r.uid), str(r.person)) for r in seen],
                gone=[(int(r.uid), int(r.modseq)) for r in gone],
            )

        return await self.store.read(read)

    def _index_delta(
        self, params: dict[str, Any]
    ) -> Callable[[AsyncConnection], Coroutine[Any, Any, FolderRead]]:
        """PostgreSQL: what changed above a MODSEQ in one statement, so one snapshot
        without a transaction: one round trip instead of six (BEGIN, the head, the
        rows, the \\Seen rows, the removals, COMMIT). After every commit that touches
        a folder, each process with its index in memory makes this read."""

        async def read(conn: AsyncConnection) -> FolderRead:
            stmt = self._statement("index_delta", conn.dialect)
            row = await (await raw_connection(conn)).fetchone(stmt, params)
            if row is None:
                raise FolderMissing("folder deleted")
            return FolderRead(
                folder=_folder(_FolderRow(*row[:8])),
                rows=list(row[8]),
                seen=[(int(uid), str(person)) for uid, person in row[9]],
                gone=[(int(uid), int(modseq)) for uid, modseq in row[10]],
            )

        return read

    async def vanished(self, folder_id: int, since: int) -> list[int]:
        """UIDs removed from the folder with a MODSEQ above `since`, ascending (RFC 7162
        §3.2.5 / §3.2.6 VANISHED (EARLIER)). The `expunged` table keeps every removal,
        so the answer is exact, never a superset."""
        params = {"folder_id": folder_id, "since": since}
        rows = await self.store.read(_all(_GONE, params))
        return sorted(int(r.uid) for r in rows)

    async def status(self, folder_id: int, person: str | None) -> FolderStatus:
        async def read(conn: AsyncConnection) -> tuple[Any, Any, Any, Any, Any, Any]:
            head = (
                await conn.execute(select(t.folders).where(t.folders.c.id == folder_id))
            ).one_or_none()
            if head is None:
                raise FolderMissing("folder deleted")
            count, size = (
                await conn.execute(
                    select(func.count(), func.coalesce(func.sum(t.messages.c.size), 0)).where(
                        t.messages.c.folder_id == folder_id
                    )
                )
            ).one()
            recent = (
                await conn.execute(
                    select(func.count()).where(
                        and_(
                            t.messages.c.folder_id == folder_id,
                            t.messages.c.uid >= head.recent_uid,
                        )
                    )
                )
            ).scalar_one()
            # Flags are stored space-separated and no keyword holds a backslash (an
            # atom cannot), so the substring test is exact.
            deleted = (
                await conn.execute(
                    select(func.count()).where(
                        and_(
                            t.messages.c.folder_id == folder_id,
                            t.messages.c.flags.contains(DELETED, autoescape=True),
                        )
                    )
                )
            ).scalar_one()
            if person is None:
                seen = (
                    await conn.execute(
                        select(func.count()).where(
                            and_(
                                t.messages.c.folder_id == folder_id,
                                t.messages.c.flags.contains(SEEN, autoescape=True),
                            )
                        )
                    )
                ).scalar_one()
            else:
                seen = (
                    await conn.execute(
                        select(func.count())
                        .select_from(
                            t.seen.join(t.messages, t.messages.c.id == t.seen.c.message_id)
                        )
                        .where(and_(t.messages.c.folder_id == folder_id, t.seen.c.person == person))
                    )
                ).scalar_one()
            return head, count, size, seen, recent, deleted

        head, count, size, seen, recent, deleted = await self.store.read(read)
        return FolderStatus(
            messages=int(count),
            recent=int(recent),
            unseen=int(count) - int(seen),
            uidnext=int(head.uidnext),
            uidvalidity=int(head.uidvalidity),
            highestmodseq=int(head.highestmodseq),
            size=int(size),
            deleted=int(deleted),
        )

    async def rows(self, folder_id: int, uids: Sequence[int]) -> dict[int, MessageRow]:
        """FETCH data (blob, size, dates) of the given UIDs that still exist."""
        if not uids:
            return {}
        cols = select(
            t.messages.c.uid,
            t.messages.c.blob_id,
            t.messages.c.size,
            t.messages.c.internal_date,
            t.messages.c.internal_offset,
            t.messages.c.message_id,
        )
        stmt = cols.where(t.messages.c.folder_id == folder_id)
        wanted = set(uids)
        if len(uids) > _IN_LIMIT:
            stmt = stmt.where(t.messages.c.uid.between(min(uids), max(uids)))
        else:
            stmt = stmt.where(t.messages.c.uid.in_(list(wanted)))
        rows = await self.store.read(_all(stmt))
        return {
            int(r.uid): MessageRow(
                int(r.uid),
                r.blob_id,
                int(r.size),
                internal_date(r.internal_date, int(r.internal_offset)),
                r.message_id,
            )
            for r in rows
            if int(r.uid) in wanted
        }

    def _meta(self, blob_id: str, sealed: bytes) -> MessageMeta:
        # Blobs never change: their decrypted metadata can be kept (bounded LRU-ish).
        meta = self._meta_cache.get(blob_id)
        if meta is None:
            meta = MessageMeta.from_json(self.store.open_meta(blob_id, sealed))
            self._remember(blob_id, meta)
        return meta

    def _remember(self, blob_id: str, meta: MessageMeta) -> None:
        self._meta_cache.put(blob_id, meta)

    def cached_meta(self, blob_id: str) -> MessageMeta | None:
        """The metadata of a blob if it is in memory."""
        return self._meta_cache.get(blob_id)

    def cached_rows(self, folder: FolderInfo, uids: Iterable[int]) -> dict[int, MessageRow]:
        """The rows of the given UIDs that some session of this daemon read already."""
        cache, box, validity = self._row_cache, folder.box, folder.uidvalidity
        return {u: row for u in uids if (row := cache.get((box, validity, u))) is not None}

    def keep_rows(self, folder: FolderInfo, rows: Iterable[MessageRow]) -> None:
        self._keep_rows(folder.box, folder.uidvalidity, rows)

    def _keep_rows(self, box: str, validity: int, rows: Iterable[MessageRow]) -> None:
        cache = self._row_cache
        for row in rows:
            cache.put((box, validity, row.uid), row)

    def cached_raw(self, blob_id: str) -> bytes | None:
        """The decrypted octets of a blob if they are in memory."""
        return self.raw_cache.get(blob_id)

    async def metas(self, blob_ids: Iterable[str]) -> dict[str, MessageMeta]:
        """Decrypted parsed metadata of the given blobs."""
        ids = list(dict.fromkeys(blob_ids))
        out: dict[str, MessageMeta] = {i: m for i in ids if (m := self._meta_cache.get(i))}
        missing = [i for i in ids if i not in out]
        if not missing:
            return out

        async def read(conn: AsyncConnection) -> list[Any]:
            found: list[Any] = []
            for i in range(0, len(missing), _IN_LIMIT):
                chunk = missing[i : i + _IN_LIMIT]
                found += (
                    await conn.execute(
                        select(t.blobs.c.id, t.blobs.c.meta).where(t.blobs.c.id.in_(chunk))
                    )
                ).all()
            return found

        for r in await self.store.read(read, point=len(missing) <= POINT_ROWS):
            out[r.id] = self._meta(r.id, bytes(r.meta))
        return out

    async def headers(
        self, blob_ids: Iterable[str]
    ) -> dict[str, tuple[Envelope, str | None, str | None]]:
        """(envelope, Message-ID, References) of the given blobs: from the metadata
        cache, or decrypted without building the body tree (SORT and THREAD keys)."""
        ids = list(dict.fromkeys(blob_ids))
        out: dict[str, tuple[Envelope, str | None, str | None]] = {}
        missing = []
        for i in ids:
            meta = self._meta_cache.get(i)
            if meta is None:
                missing.append(i)
            else:
                out[i] = (meta.envelope, meta.message_id, meta.references)
        if not missing:
            return out

        async def read(conn: AsyncConnection) -> list[Any]:
            found: list[Any] = []
            for i in range(0, len(missing), _IN_LIMIT):
                chunk = missing[i : i + _IN_LIMIT]
                found += (
                    await conn.execute(
                        select(t.blobs.c.id, t.blobs.c.meta).where(t.blobs.c.id.in_(chunk))
                    )
                ).all()
            return found

        for r in await self.store.read(read):
            out[r.id] = headers_from_json(self.store.open_meta(r.id, bytes(r.meta)))
        return out

    async def fetch_data(
        self, folder_id: int, uids: Sequence[int], *, meta: bool, raw: bool
    ) -> tuple[dict[int, MessageRow], dict[str, MessageMeta], dict[str, bytes]]:
        """FETCH rows of the given UIDs, with their metadata and bytes if asked, in one
        query (the metadata of many messages comes from the cache)."""
        if not uids:
            return {}, {}, {}
        wanted = set(uids)
        by_range = len(wanted) > _IN_LIMIT
        result = await self.store.read(
            _all(_fetch_stmt(raw, by_range), _uid_params(folder_id, wanted, by_range)),
            point=len(wanted) <= (POINT_RAW_ROWS if raw else POINT_ROWS),
        )
        rows: dict[int, MessageRow] = {}
        metas: dict[str, MessageMeta] = {}
        raws: dict[str, bytes] = {}
        for r in result:
            uid = int(r.uid)
            if uid not in wanted:
                continue
            rows[uid] = MessageRow(
                uid,
                r.blob_id,
                int(r.size),
                internal_date(r.internal_date, int(r.internal_offset)),
                r.message_id,
            )
            if raw:
                metas[r.blob_id] = self._meta(r.blob_id, bytes(r.meta))
                raws[r.blob_id] = octets = self.store.cipher.open(r.blob_id, bytes(r.data))
                self.raw_cache.put(r.blob_id, octets)
        if meta and not raw:
            metas = await self.metas(row.blob_id for row in rows.values())
        return rows, metas, raws

    async def raws(self, blob_ids: Iterable[str], *, per_query: int = 50) -> dict[str, bytes]:
        """Decrypted message bytes of the given blobs, `per_query` blobs a query (the
        caller bounds the bytes it asks for at once)."""
        ids = list(dict.fromkeys(blob_ids))
        out: dict[str, bytes] = {}
        step = max(1, min(per_query, _IN_LIMIT))
        for i in range(0, len(ids), step):
            chunk = ids[i : i + step]
            stmt = select(t.blobs.c.id, t.blobs.c.data).where(t.blobs.c.id.in_(chunk))
            for r in await self.store.read(_all(stmt)):
                out[r.id] = self.store.cipher.open(r.id, bytes(r.data))
        return out

    # --- changing a folder ----------------------------------------------------------

    def _writing(self, conn: AsyncConnection, ctx: TxContext) -> tuple[Raw, _Statements]:
        """The unit's DBAPI connection and the statements to run on it (built once)."""
        assert ctx.raw is not None  # set by the writer
        if self._sql is None:
            self._sql = _Statements.for_dialect(conn.dialect)
        return ctx.raw, self._sql

    @staticmethod
    async def _bump(raw: Raw, sql: _Statements, folder_id: int, uids: int = 0) -> _Bumped:
        """Take the next MODSEQ (and `uids` new UIDs) of a folder; the UPDATE locks the
        folder row until commit."""
        row = await raw.fetchone(sql.bump, {"folder_id": folder_id, "n": uids})
        if row is None:
            raise FolderMissing("folder deleted")
        return _bumped(row, uids)

    async def store_flags(
        self,
        folder_id: int,
        uids: Sequence[int],
        mode: str,
        flags: frozenset[str],
        *,
        person: str | None,
        unchanged_since: int | None = None,
        event: AuditEvent | None = None,
        keep: frozenset[str] = frozenset(),
    ) -> StoreResult:
        """STORE on the given UIDs, computed from the flags as committed (not from a
        session's possibly older view), in one transaction with its audit event (written
        only if a flag changed). With FLAGS (replace), flags in `keep` stay as they are
        (those the person has no right to clear, RFC 4314 §4)."""

        async def unit(conn: AsyncConnection, ctx: TxContext) -> StoreResult:
            raw, sql = self._writing(conn, ctx)
            current = await self._current(raw, sql, folder_id, uids, person)
            modified: list[int] = []
            updates: list[tuple[int, int, frozenset[str], frozenset[str]]] = []
            for msg_id, uid, modseq, have in current:
                if unchanged_since is not None and modseq > unchanged_since:
                    modified.append(uid)
                    continue
                want = apply_mode(have, mode, flags)
                if keep and mode == "FLAGS":
                    want = (want - keep) | (have & keep)
                if want != have:
                    updates.append((msg_id, uid, have, want))
            changed: list[Flagged] = []
            if updates:
                stored = [format_flags(want - {SEEN} if person else want) for *_, want in updates]
                if sql.bump_set_flags is not None:
                    ids = [mid for mid, *_ in updates]
                    values = {"folder_id": folder_id, "n": 0, "ids": ids, "flags": stored}
                    row = await raw.fetchone(sql.bump_set_flags, values)
                    if row is None:
                        raise FolderMissing("folder deleted")
                    bumped = _bumped(row, 0)
                else:
                    bumped = await self._bump(raw, sql, folder_id)
                    await raw.executemany(
                        sql.set_flags,
                        [
                            {"mid": mid, "f": f, "m": bumped.modseq}
                            for (mid, *_), f in zip(updates, stored, strict=True)
                        ],
                    )
                modseq = bumped.modseq
                if person is not None:
                    add = [mid for mid, _, have, want in updates if SEEN in want - have]
                    drop = [mid for mid, _, have, want in updates if SEEN in have - want]
                    await raw.executemany(
                        sql.insert_seen, [{"message_id": m, "person": person} for m in add]
                    )
                    # One row each: the same rows as `message_id IN (...)`, one statement.
                    await raw.executemany(sql.delete_seen, [{"p": person, "mid": m} for m in drop])
                changed = [Flagged(uid, modseq, want) for _, uid, _, want in updates]
                ctx.touch(folder_id)
                # Per-person \Seen stays here: the operator has one \Seen for the box.
                private = frozenset({SEEN}) if person is not None else frozenset()
                deltas = [
                    (uid, want - have - private, have - want - private)
                    for _, uid, have, want in updates
                ]
                await _journal_flags(
                    raw, sql, self.store.clock(), bumped.mirror, folder_id, deltas, event
                )
            if event is not None and changed:
                ctx.audit(event)
            return StoreResult(tuple(changed), tuple(modified))

        return await self.store.transact(unit, weight=ROW_WEIGHT * len(uids))

    @staticmethod
    async def _current(
        raw: Raw, sql: _Statements, folder_id: int, uids: Sequence[int], person: str | None
    ) -> list[tuple[int, int, int, frozenset[str]]]:
        """(message id, uid, modseq, flags as `person` sees them) of the given UIDs."""
        wanted = set(uids)
        if not wanted:
            return []
        by_range = len(wanted) > _IN_LIMIT
        params = _uid_params(folder_id, wanted, by_range)
        params["person"] = person
        out = []
        stmt = sql.current[(person is not None, by_range)]
        # Rows of the driver: (id, uid, modseq, flags[, the person's seen row]).
        for r in await raw.fetchall(stmt, params):
            uid = int(r[1])
            if uid not in wanted:
                continue
            flags = parse_flags(r[3])
            if person is not None:
                flags = flags - {SEEN} | ({SEEN} if r[4] is not None else frozenset())
            out.append((int(r[0]), uid, int(r[2]), flags))
        return out

    async def expunge(
        self,
        folder_id: int,
        uids: Sequence[int] | None,
        make_event: Any,
    ) -> list[tuple[int, str | None]]:
        """Remove the messages flagged \\Deleted (among `uids` if given: UID EXPUNGE,
        RFC 4315 §2.1). `make_event(uids, message_ids)` gives the audit event, written
        only if something was removed. Returns (uid, Message-ID) of what was removed."""

        among = None if uids is None else set(uids)

        async def unit(conn: AsyncConnection, ctx: TxContext) -> list[tuple[int, str | None]]:
            raw, sql = self._writing(conn, ctx)
            # Rows of the driver: (id, uid, flags, message_id).
            rows = [
                (int(mid), int(uid), message_id)
                for mid, uid, flags, message_id in await raw.fetchall(
                    sql.deleted, {"folder_id": folder_id}
                )
                if DELETED in parse_flags(flags) and (among is None or int(uid) in among)
            ]
            if not rows:
                return []
            mirror = await self._remove(raw, sql, folder_id, [(mid, uid) for mid, uid, _ in rows])
            ctx.touch(folder_id)
            gone = sorted((uid, message_id) for _, uid, message_id in rows)
            event = make_event(tuple(u for u, _ in gone), tuple(m for _, m in gone if m))
            _audit(ctx, event)
            if mirror is not None:
                await _journal(
                    raw,
                    sql,
                    self.store.clock(),
                    mirror,
                    "expunge",
                    folder_id,
                    {"uids": [u for u, _ in gone]},
                    event,
                )
            return gone

        # EXPUNGE of a whole folder: how many rows go is known only inside the unit.
        weight = None if uids is None else ROW_WEIGHT * len(uids)
        return await self.store.transact(unit, weight=weight)

    async def _remove(
        self, raw: Raw, sql: _Statements, folder_id: int, items: Sequence[tuple[int, int]]
    ) -> tuple[str, str] | None:
        """Remove the messages (id, uid); returns the folder's mirror (`_Bumped`)."""
        if sql.bump_remove is not None:
            values = {
                "folder_id": folder_id,
                "n": 0,
                "ids": [i for i, _ in items],
                "uids": [uid for _, uid in items],
            }
            row = await raw.fetchone(sql.bump_remove, values)
            if row is None:
                raise FolderMissing("folder deleted")
            return _bumped(row, 0).mirror
        bumped = await self._bump(raw, sql, folder_id)
        modseq = bumped.modseq
        # One row each: the same rows as `id IN (...)`, one statement for any number.
        await raw.executemany(sql.delete_message, [{"mid": i} for i, _ in items])
        # A UID expunged, re-used? Never: UIDs only grow. The row records the removal.
        await raw.executemany(
            sql.insert_expunged,
            [{"folder_id": folder_id, "uid": uid, "modseq": modseq} for _, uid in items],
        )
        return bumped.mirror

    async def copy(
        self,
        source_id: int,
        uids: Sequence[int],
        dest_id: int,
        *,
        source_person: str | None,
        dest_person: str | None,
        move: bool,
        make_event: Any,
    ) -> CopyResult:
        """COPY / MOVE (RFC 3501 §6.4.7, RFC 6851): the same blob under new UIDs in the
        destination, flags kept (\\Seen as the acting person sees it); MOVE also removes
        the originals. One transaction with the audit event."""

        async def unit(conn: AsyncConnection, ctx: TxContext) -> CopyResult:
            raw, sql = self._writing(conn, ctx)
            current = await self._current(raw, sql, source_id, uids, source_person)
            if not current:
                return CopyResult(0, (), (), ())
            meta = {
                int(r.id): r
                for r in (
                    await conn.execute(
                        select(
                            t.messages.c.id,
                            t.messages.c.blob_id,
                            t.messages.c.internal_date,
                            t.messages.c.internal_offset,
                            t.messages.c.size,
                            t.messages.c.message_id,
                        ).where(t.messages.c.id.in_([c[0] for c in current]))
                    )
                ).all()
            }
            bumped = await self._bump(raw, sql, dest_id, len(current))
            modseq, first, uidvalidity = bumped.modseq, bumped.first_uid, bumped.uidvalidity
            rows = []
            seen_uids = []
            for n, (mid, _, _, flags) in enumerate(current):
                r = meta[mid]
                new_uid = first + n
                rows.append(
                    {
                        "folder_id": dest_id,
                        "uid": new_uid,
                        "modseq": modseq,
                        "blob_id": r.blob_id,
                        "internal_date": r.internal_date,
                        "internal_offset": r.internal_offset,
                        "size": r.size,
                        "flags": format_flags(flags - {SEEN} if dest_person else flags),
                        "message_id": r.message_id,
                    }
                )
                if dest_person is not None and SEEN in flags:
                    seen_uids.append(new_uid)
            await conn.execute(insert(t.messages), rows)
            if seen_uids:
                new_ids = (
                    await conn.execute(
                        select(t.messages.c.id).where(
                            and_(t.messages.c.folder_id == dest_id, t.messages.c.uid.in_(seen_uids))
                        )
                    )
                ).all()
                await conn.execute(
                    insert(t.seen), [{"message_id": r.id, "person": dest_person} for r in new_ids]
                )
            ctx.touch(dest_id)
            source_mirror = None
            if move:
                source_mirror = await self._remove(
                    raw, sql, source_id, [(c[0], c[1]) for c in current]
                )
                ctx.touch(source_id)
            src = tuple(c[1] for c in current)
            mids = tuple(meta[c[0]].message_id for c in current if meta[c[0]].message_id)
            event = make_event(src, mids)
            _audit(ctx, event)
            dest = tuple(first + n for n in range(len(current)))
            if not move and bumped.mirror is not None:
                # a COPY into a mirrored box: from the same box, or from elsewhere
                source_mirror = await _mirror_of(raw, sql, source_id)
            await _journal_copy(
                raw,
                sql,
                self.store.clock(),
                (source_id, src, source_mirror),
                (dest_id, dest, bumped.mirror),
                move=move,
                event=event,
            )
            return CopyResult(uidvalidity, src, dest, mids)

        return await self.store.transact(unit)

    async def append(
        self,
        box: str,
        folder: str,
        raw: bytes,
        meta: MessageMeta,
        flags: frozenset[str],
        internal_date: dt.datetime,
        *,
        person: str | None,
        make_event: Any,
    ) -> tuple[int, int]:
        """APPEND (RFC 3501 §6.3.11): blob, metadata and message row in one
        transaction with the audit event. Returns (uidvalidity, uid) for APPENDUID."""
        uidvalidity, uids = await self.append_many(
            box,
            folder,
            [Appended(raw, meta, flags, internal_date)],
            person=person,
            make_event=lambda got: [make_event(got[0])],
        )
        return uidvalidity, uids[0]

    async def append_many(
        self,
        box: str,
        folder: str,
        messages: Sequence[Appended],
        *,
        person: str | None,
        make_event: Callable[[list[int]], Sequence[AuditEvent | None]],
    ) -> tuple[int, list[int]]:
        """MULTIAPPEND (RFC 3502 §6.3.11): every message or none, in one transaction
        with their audit events (`make_event` is given the new UIDs); one APPEND is
        the case of a single message. Returns
        (uidvalidity, uids in the order given)."""
        sealed = []
        for m in messages:
            blob_id = secrets.token_hex(16)
            sealed.append(
                (
                    blob_id,
                    self.store.cipher.seal(blob_id, m.raw),
                    self.store.seal_meta(blob_id, m.meta.to_json()),
                )
            )

        async def unit(conn: AsyncConnection, ctx: TxContext) -> tuple[int, list[int]]:
            raw, sql = self._writing(conn, ctx)
            # The folder found by its name and bumped, in one statement.
            found = await raw.fetchone(
                sql.bump_by_name, {"address": box.lower(), "name": folder, "n": len(messages)}
            )
            if found is None:
                raise FolderMissing(f"no folder {folder!r} in {box}")
            bumped, folder_id = _bumped(found, len(messages)), int(found[5])
            modseq, first, uidvalidity = bumped.modseq, bumped.first_uid, bumped.uidvalidity
            uids: list[int] = []
            fast, now = self.store.statements, self.store.clock()
            # Written with the batch's acceptances (PostgreSQL: in its last statement),
            # but for a per-person \Seen, whose row needs the message's id now.
            later = ctx.accepted
            for n, (m, (blob_id, data, meta)) in enumerate(zip(messages, sealed, strict=True)):
                uid = first + n
                blob = {"id": blob_id, "size": len(m.raw), "data": data, "meta": meta}
                row = {
                    "folder_id": folder_id,
                    "uid": uid,
                    "modseq": modseq,
                    "blob_id": blob_id,
                    # The instant in UTC (SQLite keeps no zone) and the zone apart.
                    "internal_date": m.internal_date.astimezone(dt.UTC),
                    "internal_offset": offset_minutes(m.internal_date),
                    "size": len(m.raw),
                    "flags": format_flags(m.flags - {SEEN} if person else m.flags),
                    "message_id": m.meta.message_id,
                }
                uids.append(uid)
                if later is not None and (person is None or SEEN not in m.flags):
                    later.blobs.append(blob | {"created_at": now})
                    later.messages.append(row)
                    continue
                # The acceptance path's prepared statements.
                await raw.insert_blob(fast, blob | {"created_at": now})
                if person is None or SEEN not in m.flags:
                    await raw.execute(fast.insert_message, row)
                    continue
                # Per-person \Seen: the new row's id is needed for its `seen` row.
                got = await raw.fetchone(sql.insert_message_id, row)
                assert got is not None
                await raw.execute(sql.insert_seen, {"message_id": int(got[0]), "person": person})
            ctx.touch(folder_id)
            events = list(make_event(uids))
            for event in events:
                _audit(ctx, event)
            mirror = bumped.mirror
            if mirror is not None:
                # One journal row for the whole append (gateway mode replays it).
                first_event = next((e for e in events if e is not None), None)
                await _journal(
                    raw,
                    sql,
                    self.store.clock(),
                    mirror,
                    "append",
                    folder_id,
                    {"uids": uids},
                    first_event,
                )
            return uidvalidity, uids

        weight = sum(len(m.raw) for m in messages)  # SQLite: small ones on the loop
        uidvalidity, uids = await self.store.transact(unit, weight=weight)
        # Committed: what a FETCH by any session would read of them is known already.
        rows = []
        for uid, m, (blob_id, _, _) in zip(uids, messages, sealed, strict=True):
            instant, offset = m.internal_date.astimezone(dt.UTC), offset_minutes(m.internal_date)
            when = internal_date(instant, offset)
            rows.append(MessageRow(uid, blob_id, len(m.raw), when, m.meta.message_id))
            # Equal to what a read gives back (MessageMeta.from_json; tests/message).
            self._remember(blob_id, m.meta)
            self.raw_cache.put(blob_id, m.raw)
        self._keep_rows(box.lower(), uidvalidity, rows)
        return uidvalidity, uids

    async def _folder_in(self, conn: AsyncConnection, box: str, name: str) -> FolderInfo:
        folder = await self._find_folder(conn, box, name)
        if folder is None:
            raise FolderMissing(f"no folder {name!r} in {box}")
        return folder

    # --- folder management (CREATE / DELETE / RENAME) --------------------------------

    async def create_folder(
        self, box: str, name: str, special_use: str | None, event: AuditEvent
    ) -> None:
        """CREATE (RFC 3501 §6.3.3): the folder and, as the RFC asks, any missing
        superior name (``a/b/c`` creates ``a`` and ``a/b``). FolderExists if `name` is
        taken. One transaction with the audit event."""

        async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
            box_id = await self._box_id(conn, box)
            existing = await self._folder_names(conn, box_id)
            if name in existing:
                raise FolderExists(name)
            created: list[tuple[str, int, str | None]] = []
            for parent in _superiors(name):
                if parent not in existing:
                    fid = await self.store.create_folder_row(conn, box_id, parent, None)
                    created.append((parent, fid, None))
            fid = await self.store.create_folder_row(conn, box_id, name, special_use)
            created.append((name, fid, special_use))
            ctx.audit(event)
            raw, sql = self._writing(conn, ctx)
            if await _is_mirrored(raw, sql, box):
                # Each folder made here (the parents too) is made at the operator.
                for folder_name, folder_id, special in created:
                    ctx.touch(folder_id)
                    await _journal(
                        raw,
                        sql,
                        self.store.clock(),
                        box.lower(),
                        "create",
                        folder_id,
                        {"special_use": special},
                        event,
                        folder=folder_name,
                    )

        await self.store.transact(unit)

    @staticmethod
    async def _box_id(conn: AsyncConnection, box: str) -> int:
        box_id = (
            await conn.execute(select(t.mailboxes.c.id).where(t.mailboxes.c.address == box.lower()))
        ).scalar_one_or_none()
        if box_id is None:
            raise FolderMissing(f"no box {box}")
        return int(box_id)

    @staticmethod
    async def _folder_names(conn: AsyncConnection, box_id: int) -> dict[str, int]:
        return {
            r.name: int(r.id)
            for r in await conn.execute(
                select(t.folders.c.name, t.folders.c.id).where(t.folders.c.mailbox_id == box_id)
            )
        }

    async def claim_recent(self, folder_id: int, upto: int) -> int:
        """Take, for the calling session, the \\Recent of every message below UID
        `upto` that no session has taken yet (RFC 3501 §2.3.2: exactly one session sees
        a new message as recent). Returns the watermark found: the caller's recent
        messages are those from it up to `upto` (none if it is at or above `upto`)."""

        async def unit(conn: AsyncConnection, ctx: TxContext) -> int:
            raw, sql = self._writing(conn, ctx)
            values = {"folder_id": folder_id, "upto": upto}
            if sql.claim_recent is not None:
                row = await raw.fetchone(sql.claim_recent, values)
                if row is None:
                    raise FolderMissing("folder deleted")
                return int(row[0])
            # SQLite: the one writer serialises this.
            row = await raw.fetchone(sql.recent_of, {"folder_id": folder_id})
            if row is None:
                raise FolderMissing("folder deleted")
            before = int(row[0])
            if before < upto:
                await raw.execute(sql.set_recent, values)
            return before

        return await self.store.transact(unit, weight=0)  # the folder's row

    async def delete_folder(self, box: str, name: str, event: AuditEvent) -> None:
        async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
            raw, sql = self._writing(conn, ctx)
            info = await self._folder_in(conn, box, name)
            mirror = await _mirror_of(raw, sql, info.id)
            if mirror is not None:
                remote = (
                    await conn.execute(
                        select(t.upstream_folders.c.remote_name).where(
                            t.upstream_folders.c.folder_id == info.id
                        )
                    )
                ).scalar_one_or_none()
                await _journal(
                    raw,
                    sql,
                    self.store.clock(),
                    mirror,
                    "delete",
                    info.id,
                    {"remote": remote},
                    event,
                )
            await conn.execute(delete(t.expunged).where(t.expunged.c.folder_id == info.id))
            await conn.execute(
                delete(t.seen).where(
                    t.seen.c.message_id.in_(
                        select(t.messages.c.id).where(t.messages.c.folder_id == info.id)
                    )
                )
            )
            await conn.execute(delete(t.messages).where(t.messages.c.folder_id == info.id))
            await conn.execute(delete(t.folders).where(t.folders.c.id == info.id))
            ctx.touch(info.id)
            ctx.audit(event)

        await self.store.transact(unit)
        self.store.forget_folder(box, name)

    async def rename_folder(self, box: str, old: str, new: str, event: AuditEvent) -> None:
        """Rename a folder and its children (``old/x`` → ``new/x``), creating the
        missing superiors of `new` (RFC 3501 §6.3.5). FolderExists if a name is taken."""

        async def unit(conn: AsyncConnection, ctx: TxContext) -> list[str]:
            info = await self._folder_in(conn, box, old)
            box_id = (
                await conn.execute(select(t.folders.c.mailbox_id).where(t.folders.c.id == info.id))
            ).scalar_one()
            names = await self._folder_names(conn, box_id)
            moved = [n for n in names if n == old or n.startswith(old + "/")]
            renamed = {n: new + n[len(old) :] for n in moved}
            if any(target in names for target in renamed.values()):
                raise FolderExists(new)
            for n in moved:
                await conn.execute(
                    update(t.folders).where(t.folders.c.id == names[n]).values(name=renamed[n])
                )
                ctx.touch(names[n])
            for parent in _superiors(new):
                if parent not in names:
                    await self.store.create_folder_row(conn, box_id, parent, None)
            ctx.audit(event)
            raw, sql = self._writing(conn, ctx)
            if await _is_mirrored(raw, sql, box):
                await _journal(
                    raw,
                    sql,
                    self.store.clock(),
                    box.lower(),
                    "rename",
                    info.id,
                    {"new": new},
                    event,
                    folder=old,
                )
            return moved

        for n in await self.store.transact(unit):
            self.store.forget_folder(box, n)

    # --- subscriptions (RFC 3501 §6.3.6, §6.3.7) --------------------------------------

    async def subscriptions(self, person: str) -> set[tuple[str, str]]:
        rows = await self.store.read(
            _all(
                select(t.subscriptions.c.mailbox, t.subscriptions.c.folder).where(
                    t.subscriptions.c.person == person
                )
            ),
            point=True,
        )
        return {(r.mailbox, r.folder) for r in rows}

    async def subscribe(self, person: str, box: str, folder: str, on: bool) -> None:
        async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
            where = and_(
                t.subscriptions.c.person == person,
                t.subscriptions.c.mailbox == box.lower(),
                t.subscriptions.c.folder == folder,
            )
            await conn.execute(delete(t.subscriptions).where(where))
            if on:
                await conn.execute(
                    insert(t.subscriptions).values(
                        person=person, mailbox=box.lower(), folder=folder
                    )
                )

        await self.store.transact(unit)


def _superiors(name: str) -> list[str]:
    """The hierarchy names above `name`, outermost first: ``a/b/c`` → ``a``, ``a/b``
    (``/`` is the hierarchy delimiter of every box, `relay.imap.names`)."""
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _all(
    stmt: Any, params: dict[str, Any] | None = None
) -> Callable[[AsyncConnection], Coroutine[Any, Any, Sequence[Any]]]:
    """A read (for `Store.read`) giving every row of `stmt`."""

    async def read(conn: AsyncConnection) -> Sequence[Any]:
        return (await conn.execute(stmt, params)).all()

    return read


# Hot statements, built once with bound parameters (building a statement costs more
# than running it from SQLAlchemy's compiled cache).

_HEAD = select(t.folders.c.highestmodseq, t.folders.c.uidnext, t.folders.c.recent_uid).where(
    t.folders.c.id == bindparam("folder_id")
)


class _FolderRow(NamedTuple):
    """A row of `_FOLDERS_OF_BOX` as the driver gives it, named for `_folder`."""

    id: int
    address: str
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: str | None
    recent_uid: int


# The columns of a _FolderRow (ints and text on both drivers: read raw as they are).
_FOLDER_ROW = select(
    t.folders.c.id,
    t.mailboxes.c.address,
    t.folders.c.name,
    t.folders.c.uidvalidity,
    t.folders.c.uidnext,
    t.folders.c.highestmodseq,
    t.folders.c.special_use,
    t.folders.c.recent_uid,
).join(t.mailboxes, t.mailboxes.c.id == t.folders.c.mailbox_id)
_FOLDERS_OF_BOX = _FOLDER_ROW.where(t.mailboxes.c.address == bindparam("address")).order_by(
    t.folders.c.name
)
_FOLDER_BY_NAME = _FOLDER_ROW.where(
    and_(t.mailboxes.c.address == bindparam("address"), t.folders.c.name == bindparam("name"))
)
_FOLDERS_OF_BOXES = _FOLDER_ROW.where(
    t.mailboxes.c.address == any_(bindparam("boxes", type_=ARRAY(t.mailboxes.c.address.type)))
).order_by(t.mailboxes.c.address, t.folders.c.name)
_FOLDER_BY_ID = (
    select(t.folders, t.mailboxes.c.address)
    .join(t.mailboxes, t.mailboxes.c.id == t.folders.c.mailbox_id)
    .where(t.folders.c.id == bindparam("folder_id"))
)
_MESSAGES_ABOVE = and_(
    t.messages.c.folder_id == bindparam("folder_id"),
    t.messages.c.modseq > bindparam("since"),
)
_GONE_ABOVE = and_(
    t.expunged.c.folder_id == bindparam("folder_id"),
    t.expunged.c.modseq > bindparam("since"),
)
_INDEX_ROWS = select(
    t.messages.c.uid, t.messages.c.modseq, t.messages.c.flags, t.messages.c.size
).where(_MESSAGES_ABOVE)
_INDEX_SEEN = (
    select(t.messages.c.uid, t.seen.c.person)
    .select_from(t.seen.join(t.messages, t.messages.c.id == t.seen.c.message_id))
    .where(_MESSAGES_ABOVE)
)
_GONE = select(t.expunged.c.uid, t.expunged.c.modseq).where(_GONE_ABOVE)
# PostgreSQL: `index_read` since a MODSEQ as one statement (each part an array of
# rows), the same rows as _FOLDER_BY_ID, _INDEX_ROWS, _INDEX_SEEN and _GONE.
_INDEX_DELTA = _FOLDER_ROW.where(t.folders.c.id == bindparam("folder_id")).add_columns(
    func.array(
        select(
            func.row(t.messages.c.uid, t.messages.c.modseq, t.messages.c.flags, t.messages.c.size)
        )
        .where(_MESSAGES_ABOVE)
        .scalar_subquery()
    ),
    func.array(
        select(func.row(t.messages.c.uid, t.seen.c.person))
        .select_from(t.seen.join(t.messages, t.messages.c.id == t.seen.c.message_id))
        .where(_MESSAGES_ABOVE)
        .scalar_subquery()
    ),
    func.array(
        select(func.row(t.expunged.c.uid, t.expunged.c.modseq)).where(_GONE_ABOVE).scalar_subquery()
    ),
)
# The reads `MailStore` runs from the driver, by the name it prepares them under
# (`MailStore._statement`).
_PREPARED_READS = {
    "folders_of_box": _FOLDERS_OF_BOX,
    "folders_of_boxes": _FOLDERS_OF_BOXES,  # PostgreSQL only (an array parameter)
    "folder_by_name": _FOLDER_BY_NAME,
    "index_rows": _INDEX_ROWS,
    "index_delta": _INDEX_DELTA,  # PostgreSQL only
}
# The operator's box when the folder's box is mirrored from one (gateway mode), in the
# bump's own row: the change it journals is known with the MODSEQ, one statement for
# both. Written out because SQLAlchemy's SQLite compiler drops the table names inside
# RETURNING, and `id` would then name the inner table's column.
_MIRROR_OF_BUMPED: Any = literal_column(
    "(SELECT ub.box FROM mailboxes mb JOIN upstream_boxes ub ON ub.box = mb.address"
    " WHERE mb.id = folders.mailbox_id AND ub.enabled)"
)
# What a bump returns (`_bumped`).
_BUMPED = (
    t.folders.c.highestmodseq,
    t.folders.c.uidnext,
    t.folders.c.uidvalidity,
    t.folders.c.name,
    _MIRROR_OF_BUMPED,
)
_BUMP = (
    update(t.folders)
    .where(t.folders.c.id == bindparam("folder_id"))
    .values(
        uidnext=t.folders.c.uidnext + bindparam("n"),
        highestmodseq=t.folders.c.highestmodseq + 1,
    )
    .returning(*_BUMPED)
)

# APPEND: the folder found by box and name, and bumped; _BUMP's row and the folder id.
_BUMP_BY_NAME = (
    update(t.folders)
    .where(
        and_(
            t.folders.c.mailbox_id
            == select(t.mailboxes.c.id)
            .where(t.mailboxes.c.address == bindparam("address"))
            .scalar_subquery(),
            t.folders.c.name == bindparam("name"),
        )
    )
    .values(
        uidnext=t.folders.c.uidnext + bindparam("n"),
        highestmodseq=t.folders.c.highestmodseq + 1,
    )
    .returning(*_BUMPED, t.folders.c.id)
)


def _with_seen(cols: list[Any], per_person: bool) -> Any:
    """SELECT `cols` of messages, with the person's `seen` row when `per_person`."""
    if not per_person:
        return select(*cols)
    return select(*cols, t.seen.c.person).select_from(
        t.messages.outerjoin(
            t.seen,
            and_(
                t.seen.c.message_id == t.messages.c.id,
                t.seen.c.person == bindparam("person"),
            ),
        )
    )


def _by_uid(stmt: Any, by_range: bool) -> Any:
    stmt = stmt.where(t.messages.c.folder_id == bindparam("folder_id"))
    if by_range:
        return stmt.where(t.messages.c.uid.between(bindparam("lo"), bindparam("hi")))
    return stmt.where(t.messages.c.uid.in_(bindparam("uids", expanding=True)))


def _uid_params(folder_id: int, wanted: set[int], by_range: bool) -> dict[str, Any]:
    if by_range:
        return {"folder_id": folder_id, "lo": min(wanted), "hi": max(wanted)}
    return {"folder_id": folder_id, "uids": list(wanted)}


@functools.cache
def _changed_stmt(per_person: bool) -> Any:
    cols = [t.messages.c.uid, t.messages.c.modseq, t.messages.c.flags]
    return (
        _with_seen(cols, per_person)
        .where(
            and_(
                t.messages.c.folder_id == bindparam("folder_id"),
                t.messages.c.modseq > bindparam("since"),
            )
        )
        .order_by(t.messages.c.uid)
    )


@functools.cache
def _fetch_stmt(raw: bool, by_range: bool) -> Any:
    cols = [
        t.messages.c.uid,
        t.messages.c.blob_id,
        t.messages.c.size,
        t.messages.c.internal_date,
        t.messages.c.internal_offset,
        t.messages.c.message_id,
    ]
    if not raw:
        return _by_uid(select(*cols), by_range)
    stmt = select(*cols, t.blobs.c.meta, t.blobs.c.data).select_from(
        t.messages.join(t.blobs, t.blobs.c.id == t.messages.c.blob_id)
    )
    return _by_uid(stmt, by_range)


class _JsonInts(TypeDecorator[Sequence[int]]):
    """Integers bound as one JSON array (text), for SQLite's json_each."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Sequence[int] | None, dialect: Dialect) -> str | None:
        return None if value is None else json.dumps(list(value))


def _uid_in(dialect: Dialect) -> Any:
    """`messages.uid` among the list bound as `uids`, as one parameter whatever its
    length, so that one prepared statement serves every list: `= ANY($n::BIGINT[])` on
    PostgreSQL, `IN (SELECT value FROM json_each(?))` on SQLite (both look each UID up
    in uq_messages_folder_uid). An expanding IN would give a statement per length."""
    uid = t.messages.c.uid
    if dialect.name == "postgresql":
        return uid == any_(bindparam("uids", type_=ARRAY(BigInteger)))
    each: Any = select(literal_column("value")).select_from(
        func.json_each(bindparam("uids", type_=_JsonInts()))
    )
    return uid.in_(each)


@dataclass(frozen=True, slots=True)
class _Statements:
    """The writer units' hot statements (STORE, EXPUNGE, APPEND and the gateway journal)
    compiled once for a dialect and run on the transaction's DBAPI connection
    (relay.store.fastsql: SQLAlchemy's execute machinery cost more than the statements
    under imaptest). Only ints and text are read back, which both drivers give as they
    are (the rows have no result processors)."""

    bump: Prepared  # one row: (highestmodseq, uidnext, uidvalidity) after it
    # (id, uid, modseq, flags[, seen.person]) by (per-person \Seen, UID range)
    current: dict[tuple[bool, bool], Prepared]
    set_flags: Prepared
    insert_seen: Prepared
    delete_seen: Prepared
    deleted: Prepared  # (id, uid, flags, message_id) that may carry \Deleted
    delete_message: Prepared
    insert_expunged: Prepared
    insert_message_id: Prepared  # one row: (id)
    bump_by_name: Prepared  # _BUMPED and the folder's id
    mirror_of: Prepared
    mirrored_box: Prepared
    insert_journal: Prepared
    recent_of: Prepared  # one row: (recent_uid)
    set_recent: Prepared
    # PostgreSQL: the bump with what it stamps, one statement (`_with_bump`); None on
    # SQLite, where a statement is a call into the library, not a round trip.
    bump_set_flags: Prepared | None  # and `ids` given `flags`
    bump_remove: Prepared | None  # and the messages `ids` removed as `uids`
    # PostgreSQL: recent_of (the row locked) and set_recent if below, one statement
    claim_recent: Prepared | None

    @classmethod
    def for_dialect(cls, dialect: Dialect) -> _Statements:
        m = t.messages.c
        cols = [m.id, m.uid, m.modseq, m.flags]
        current = {}
        for per_person in (False, True):
            base = _with_seen(cols, per_person).where(m.folder_id == bindparam("folder_id"))
            current[(per_person, True)] = base.where(
                m.uid.between(bindparam("lo"), bindparam("hi"))
            )
            current[(per_person, False)] = base.where(_uid_in(dialect))
        set_flags = (
            update(t.messages)
            .where(m.id == bindparam("mid", type_=Integer))
            .values(flags=bindparam("f", type_=Text), modseq=bindparam("m", type_=BigInteger))
        )
        delete_seen = delete(t.seen).where(
            and_(t.seen.c.person == bindparam("p"), t.seen.c.message_id == bindparam("mid"))
        )
        deleted = select(m.id, m.uid, m.flags, m.message_id).where(
            and_(
                m.folder_id == bindparam("folder_id"),
                m.flags.contains(DELETED, autoescape=True),
            )
        )
        insert_message_id = (
            insert(t.messages)
            .values({n: bindparam(n, type_=t.messages.c[n].type) for n in MESSAGE_COLUMNS})
            .returning(m.id)
        )
        recent_of = select(t.folders.c.recent_uid).where(
            t.folders.c.id == bindparam("folder_id", type_=Integer)
        )
        set_recent = (
            update(t.folders)
            .where(t.folders.c.id == bindparam("folder_id", type_=Integer))
            .values(recent_uid=bindparam("upto", type_=Integer))
        )
        journal = insert_of(
            t.upstream_journal,
            "box",
            "kind",
            "folder_id",
            "folder",
            "data",
            "person",
            "created_at",
            "state",
            "attempts",
        )
        bump = prepare(_BUMP, dialect)
        bump_set_flags = bump_remove = claim_recent = None
        if dialect.name == "postgresql":
            # The row locked first (FOR UPDATE gives its last committed state), then
            # raised if below: the watermark found is the one this claim moved from.
            claim_recent = Prepared(
                "WITH o AS (SELECT recent_uid FROM folders WHERE id = $1::INTEGER FOR UPDATE),"
                " u AS (UPDATE folders SET recent_uid = $2::BIGINT"
                " WHERE id = $1::INTEGER AND recent_uid < $2::BIGINT)"
                " SELECT recent_uid FROM o",
                ("folder_id", "upto"),
                (None, None),
                {},
            )
            # The bump's folder id ($f), and the two arrays bound after its parameters.
            f, a1, a2 = bump.names.index("folder_id") + 1, len(bump.names) + 1, len(bump.names) + 2
            set_flags_sql = (
                f"UPDATE messages SET flags = x.f, modseq = b.highestmodseq FROM b, unnest(${a1}"  # noqa: S608
                f"::INTEGER[], ${a2}::TEXT[]) AS x(id, f) WHERE messages.id = x.id"
            )
            delete_sql = f"DELETE FROM messages USING b WHERE messages.id = ANY(${a1}::INTEGER[])"  # noqa: S608
            expunged_sql = (
                f"INSERT INTO expunged (folder_id, uid, modseq) SELECT ${f}::INTEGER, x.uid,"  # noqa: S608
                f" b.highestmodseq FROM b, unnest(${a2}::BIGINT[]) AS x(uid)"
            )
            bump_set_flags = _with_bump(bump, [set_flags_sql], ("ids", "flags"))
            bump_remove = _with_bump(bump, [delete_sql, expunged_sql], ("ids", "uids"))
        return cls(
            bump=bump,
            current={k: prepare(v.order_by(m.uid), dialect) for k, v in current.items()},
            set_flags=prepare(set_flags, dialect),
            insert_seen=prepare(insert_of(t.seen, "message_id", "person"), dialect),
            delete_seen=prepare(delete_seen, dialect),
            deleted=prepare(deleted, dialect),
            delete_message=prepare(delete(t.messages).where(m.id == bindparam("mid")), dialect),
            insert_expunged=prepare(insert_of(t.expunged, "folder_id", "uid", "modseq"), dialect),
            insert_message_id=prepare(insert_message_id, dialect),
            bump_by_name=prepare(_BUMP_BY_NAME, dialect),
            mirror_of=prepare(_MIRROR_OF_FOLDER, dialect),
            mirrored_box=prepare(_MIRRORED_BOX, dialect),
            insert_journal=prepare(journal, dialect),
            recent_of=prepare(recent_of, dialect),
            set_recent=prepare(set_recent, dialect),
            bump_set_flags=bump_set_flags,
            bump_remove=bump_remove,
            claim_recent=claim_recent,
        )


def _with_bump(bump: Prepared, then: Sequence[str], arrays: tuple[str, ...]) -> Prepared:
    """PostgreSQL: a folder's bump (`_BUMP`) and the statements `then`, one statement
    of data-modifying CTEs that gives the bump's row (none if the folder is gone, and
    then `then` changes nothing: each joins `b`, the bump's row). `then` binds
    `arrays` after the bump's own parameters."""
    ctes = "".join(f", u{i} AS ({part})" for i, part in enumerate(then))
    sql = f"WITH b AS ({bump.sql}){ctes} SELECT * FROM b"  # noqa: S608
    processors = bump.processors + (None,) * len(arrays)
    return Prepared(sql, bump.names + arrays, processors, bump.constants)


def _audit(ctx: TxContext, event: AuditEvent | None) -> None:
    if event is not None:
        ctx.audit(event)


def _folder(r: Any) -> FolderInfo:
    return FolderInfo(
        id=int(r.id),
        box=r.address,
        name=r.name,
        uidvalidity=int(r.uidvalidity),
        uidnext=int(r.uidnext),
        highestmodseq=int(r.highestmodseq),
        special_use=r.special_use,
        recent_uid=int(r.recent_uid),
    )


# --- gateway mode: the journal of local changes to a box hosted at an operator ----

_MIRROR_OF_FOLDER = (
    select(t.upstream_boxes.c.box, t.folders.c.name)
    .select_from(
        t.folders.join(t.mailboxes, t.mailboxes.c.id == t.folders.c.mailbox_id).join(
            t.upstream_boxes, t.upstream_boxes.c.box == t.mailboxes.c.address
        )
    )
    .where(and_(t.folders.c.id == bindparam("folder_id"), t.upstream_boxes.c.enabled))
)
_MIRRORED_BOX = select(t.upstream_boxes.c.box).where(
    and_(t.upstream_boxes.c.box == bindparam("box"), t.upstream_boxes.c.enabled)
)


async def _mirror_of(raw: Raw, sql: _Statements, folder_id: int) -> tuple[str, str] | None:
    """(box, folder name) when the folder belongs to a box mirrored from an operator."""
    row = await raw.fetchone(sql.mirror_of, {"folder_id": folder_id})
    return (str(row[0]), str(row[1])) if row is not None else None


async def _is_mirrored(raw: Raw, sql: _Statements, box: str) -> bool:
    return await raw.fetchone(sql.mirrored_box, {"box": box.lower()}) is not None


async def _journal(
    raw: Raw,
    sql: _Statements,
    now: dt.datetime,
    mirror: tuple[str, str] | str,
    kind: str,
    folder_id: int,
    data: dict[str, Any],
    event: AuditEvent | None,
    *,
    folder: str | None = None,
) -> None:
    """One row of `upstream_journal`, in the transaction of the change it records."""
    box, name = mirror if isinstance(mirror, tuple) else (mirror, folder)
    await raw.execute(
        sql.insert_journal,
        {
            "box": box,
            "kind": kind,
            "folder_id": folder_id,
            "folder": name,
            "data": json.dumps(data, separators=(",", ":"), sort_keys=True),
            "person": event.person if event is not None else None,
            "created_at": now,
            "state": "pending",
            "attempts": 0,
        },
    )


async def _journal_flags(
    raw: Raw,
    sql: _Statements,
    now: dt.datetime,
    mirror: tuple[str, str] | None,
    folder_id: int,
    deltas: Sequence[tuple[int, frozenset[str], frozenset[str]]],
    event: AuditEvent | None,
) -> None:
    """Flag changes as flags added and removed (not FLAGS replacements): replayed as
    +FLAGS / -FLAGS they leave alone what the operator changed on other flags."""
    groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[int]] = {}
    for uid, added, removed in deltas:
        if added or removed:
            groups.setdefault((tuple(sorted(added)), tuple(sorted(removed))), []).append(uid)
    if not groups or mirror is None:
        return
    changes = [
        {"uids": sorted(uids), "add": list(add), "remove": list(remove)}
        for (add, remove), uids in sorted(groups.items())
    ]
    await _journal(raw, sql, now, mirror, "flags", folder_id, {"changes": changes}, event)


async def _journal_copy(
    raw: Raw,
    sql: _Statements,
    now: dt.datetime,
    source_side: tuple[int, Sequence[int], tuple[str, str] | None],
    dest_side: tuple[int, Sequence[int], tuple[str, str] | None],
    *,
    move: bool,
    event: AuditEvent | None,
) -> None:
    """COPY / MOVE as the operator must see it: a COPY or MOVE inside the same hosted
    box; an APPEND into a hosted box from elsewhere; an expunge from a hosted box for
    a MOVE out of it. Each side is (folder id, UIDs, its mirror as its bump found it);
    a COPY's source mirror is needed only when the destination is mirrored."""
    source_id, source_uids, source = source_side
    dest_id, dest_uids, dest = dest_side
    if source is not None and dest is not None and source[0] == dest[0]:
        data = {
            "uids": list(source_uids),
            "dest_folder_id": dest_id,
            "dest_folder": dest[1],
            "dest_uids": list(dest_uids),
        }
        await _journal(raw, sql, now, source, "move" if move else "copy", source_id, data, event)
        return
    if dest is not None:
        await _journal(raw, sql, now, dest, "append", dest_id, {"uids": list(dest_uids)}, event)
    if source is not None and move:
        await _journal(
            raw, sql, now, source, "expunge", source_id, {"uids": list(source_uids)}, event
        )
