"""The outbound queue's SQL: claim, outcome, finish, and the operator's actions.

One row per (message, remote recipient), written by `Store.accept`. A row's life:

    queued ──claim──▶ sending ──2xx──▶ delivered ─┐
       ▲                 │ ──4xx / no connection──▶ deferred ──(due)──▶ claim again
       │                 │ ──5xx / expired──▶ bounced ───────┤
       └─(lease over)────┘                                    ▼
                         every row of the message final: failure DSN if any bounced,
                         then the rows go, and the blob if no box holds the message

Claiming sets ``status = 'sending'`` and moves ``next_attempt_at`` to the end of a
*lease*: a worker that dies mid-delivery leaves rows that become due again when the
lease is over (at-least-once: a peer may see a message twice, never zero times). On
PostgreSQL several nodes claim with ``FOR UPDATE SKIP LOCKED``; SQLite has one worker,
which releases its leftover leases at start. ``attempts`` is counted at claim time
and is the claim's token: an outcome only updates the row it claimed, so an
operator's bounce or a re-claim after a lease is never overwritten by a late worker.

Final rows use ``next_attempt_at`` as a lease too, for finishing (DSN, removal), so
two nodes never finish the same message at once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, case, delete, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from relay.audit.events import AuditEvent
from relay.store import schema as t
from relay.store.store import Store, TxContext, Unit

__all__ = [
    "FINAL",
    "PENDING",
    "Outcome",
    "QueueItem",
    "QueueStore",
    "delete_blob_if_unused",
    "parse_ident",
]

PENDING: tuple[str, ...] = ("queued", "deferred", "sending")
FINAL: tuple[str, ...] = ("delivered", "bounced")
OutcomeStatus = Literal["delivered", "deferred", "bounced"]

_QUEUE_ID = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True, slots=True)
class QueueItem:
    """One queue row."""

    id: int
    queue_id: str  # the acceptance id, shared by the recipients of one message
    blob_id: str
    sender: str  # "" for a DSN (null reverse-path)
    recipient: str
    status: str
    attempts: int
    created_at: dt.datetime
    next_attempt_at: dt.datetime
    last_attempt_at: dt.datetime | None
    last_reply: str | None
    message_id: str | None
    person: str | None
    box: str | None
    delay_warned: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt decided for one claimed row."""

    item: QueueItem  # as claimed
    status: OutcomeStatus
    reply: str  # the peer's reply or our reason (stored in last_reply)
    next_attempt_at: dt.datetime  # deferred: the retry; final: now (finish at once)
    event: AuditEvent


def _utc(value: dt.datetime) -> dt.datetime:
    # SQLite stores datetimes as text without offset: always bind UTC.
    if value.tzinfo is None:
        raise ValueError("timezone-aware datetime required")
    return value.astimezone(dt.UTC)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _item(row: Any) -> QueueItem:
    created = _aware(row.created_at)
    next_at = _aware(row.next_attempt_at)
    assert created is not None and next_at is not None
    return QueueItem(
        id=int(row.id),
        queue_id=row.queue_id,
        blob_id=row.blob_id,
        sender=row.sender,
        recipient=row.recipient,
        status=row.status,
        attempts=int(row.attempts),
        created_at=created,
        next_attempt_at=next_at,
        last_attempt_at=_aware(row.last_attempt_at),
        last_reply=row.last_reply,
        message_id=row.message_id,
        person=row.person,
        box=row.box,
        delay_warned=bool(row.delay_warned),
    )


def parse_ident(ident: str) -> ColumnElement[bool]:
    """An operator's ID: a row number (`queue list` first column) or a 16-hex-digit
    queue id (all recipients of one message). ValueError otherwise."""
    text = ident.strip().lower()
    if _QUEUE_ID.fullmatch(text):
        return t.queue.c.queue_id == text
    if text.isdigit() and len(text) < 16:
        return t.queue.c.id == int(text)
    raise ValueError(f"{ident!r} is neither a row number nor a 16-hex-digit queue id")


async def delete_blob_if_unused(conn: AsyncConnection, blob_id: str) -> bool:
    """Delete a message body once no box (messages) and no queue row needs it."""
    used = await conn.execute(
        select(
            exists().where(t.messages.c.blob_id == blob_id)
            | exists().where(t.queue.c.blob_id == blob_id)
        )
    )
    if used.scalar():
        return False
    await conn.execute(delete(t.blobs).where(t.blobs.c.id == blob_id))
    return True


async def _remove_if_all_delivered(
    conn: AsyncConnection, queue_ids: set[str], *, lock: bool
) -> None:
    stmt = select(t.queue.c.queue_id, t.queue.c.status, t.queue.c.blob_id).where(
        t.queue.c.queue_id.in_(sorted(queue_ids))
    )
    if lock:
        stmt = stmt.with_for_update()
    statuses: dict[str, set[str]] = {}
    blobs: dict[str, set[str]] = {}
    for queue_id, status, blob_id in (await conn.execute(stmt)).all():
        statuses.setdefault(queue_id, set()).add(status)
        blobs.setdefault(queue_id, set()).add(blob_id)
    done = [q for q, found in statuses.items() if found == {"delivered"}]
    if not done:
        return
    await conn.execute(delete(t.queue).where(t.queue.c.queue_id.in_(done)))
    for blob_id in {b for q in done for b in blobs[q]}:
        await delete_blob_if_unused(conn, blob_id)


class QueueStore:
    """Queue operations on a `Store`: reads on its read engine, writes through its
    group-committing writer (so audit events commit with the change)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def _postgres(self) -> bool:
        return self.store.dialect == "postgresql"

    async def _read(self, stmt: Any) -> list[Any]:
        # The store package's read engine (relay.store is the only SQL speaker).
        async with self.store._read.connect() as conn:
            return list((await conn.execute(stmt)).all())

    # --- worker ---------------------------------------------------------------------

    async def next_due(self) -> dt.datetime | None:
        """When the earliest pending row is due (None: nothing pending)."""
        rows = await self._read(
            select(func.min(t.queue.c.next_attempt_at)).where(t.queue.c.status.in_(PENDING))
        )
        return _aware(rows[0][0]) if rows else None

    async def claim(
        self, now: dt.datetime, lease_until: dt.datetime, limit: int
    ) -> list[QueueItem]:
        """Take up to `limit` due rows (oldest due first) for delivery."""
        now, lease_until = _utc(now), _utc(lease_until)

        async def unit(conn: AsyncConnection, ctx: TxContext) -> list[QueueItem]:
            stmt = (
                select(t.queue)
                .where(t.queue.c.status.in_(PENDING), t.queue.c.next_attempt_at <= now)
                .order_by(t.queue.c.next_attempt_at, t.queue.c.id)
                .limit(limit)
            )
            if self._postgres:
                stmt = stmt.with_for_update(skip_locked=True)
            rows = [_item(r) for r in (await conn.execute(stmt)).all()]
            if not rows:
                return []
            await conn.execute(
                update(t.queue)
                .where(t.queue.c.id.in_([r.id for r in rows]))
                .values(
                    status="sending",
                    attempts=t.queue.c.attempts + 1,
                    last_attempt_at=now,
                    next_attempt_at=lease_until,
                )
            )
            return [
                dataclasses.replace(
                    r, status="sending", attempts=r.attempts + 1, last_attempt_at=now
                )
                for r in rows
            ]

        return await self.store.transact(unit)

    async def record(self, outcomes: Sequence[Outcome]) -> int:
        """Store outcomes and their audit events in one commit; the number of rows
        updated (a row changed meanwhile by an operator keeps the operator's change).

        A message whose rows are now all delivered needs nothing more: its rows, and
        its body if no box holds it, go in the same commit (no DSN to send)."""

        async def unit(conn: AsyncConnection, ctx: TxContext) -> int:
            updated = 0
            queue_ids = {o.item.queue_id for o in outcomes if o.status == "delivered"}
            for o in outcomes:
                res = await conn.execute(
                    update(t.queue)
                    .where(
                        t.queue.c.id == o.item.id,
                        t.queue.c.status == "sending",
                        t.queue.c.attempts == o.item.attempts,
                    )
                    .values(
                        status=o.status,
                        last_reply=o.reply[:2000],
                        next_attempt_at=_utc(o.next_attempt_at),
                    )
                )
                updated += res.rowcount or 0
                ctx.audit(o.event)
            if queue_ids:
                await _remove_if_all_delivered(conn, queue_ids, lock=self._postgres)
            return updated

        return await self.store.transact(unit)

    async def release_in_flight(self, now: dt.datetime) -> int:
        """SQLite (one worker): rows left 'sending' by a previous run are due now."""
        now = _utc(now)

        async def unit(conn: AsyncConnection, ctx: TxContext) -> int:
            res = await conn.execute(
                update(t.queue)
                .where(t.queue.c.status == "sending")
                .values(status="deferred", next_attempt_at=now)
            )
            return res.rowcount or 0

        return await self.store.transact(unit)

    async def mark_delay_warned(self, ids: Sequence[int]) -> None:
        await self.store.transact(self.marking_delay_warned(ids))

    async def rows_of(self, queue_id: str) -> list[QueueItem]:
        rows = await self._read(
            select(t.queue).where(t.queue.c.queue_id == queue_id).order_by(t.queue.c.id)
        )
        return [_item(r) for r in rows]

    # --- finishing: DSN and removal ---------------------------------------------------

    async def finishable(self, now: dt.datetime, limit: int) -> list[str]:
        """Queue ids whose rows are all final and not being finished by another node."""
        now = _utc(now)
        pending = func.sum(case((t.queue.c.status.in_(PENDING), 1), else_=0))
        rows = await self._read(
            select(t.queue.c.queue_id)
            .group_by(t.queue.c.queue_id)
            .having(and_(pending == 0, func.max(t.queue.c.next_attempt_at) <= now))
            .limit(limit)
        )
        return [r[0] for r in rows]

    async def claim_finish(
        self, queue_id: str, now: dt.datetime, lease_until: dt.datetime
    ) -> list[QueueItem] | None:
        """The rows of a message to finish, reserved until `lease_until`; None if a row
        is still pending or another node is finishing it."""
        now, lease_until = _utc(now), _utc(lease_until)

        async def unit(conn: AsyncConnection, ctx: TxContext) -> list[QueueItem] | None:
            stmt = select(t.queue).where(t.queue.c.queue_id == queue_id).order_by(t.queue.c.id)
            if self._postgres:
                stmt = stmt.with_for_update()
            rows = [_item(r) for r in (await conn.execute(stmt)).all()]
            if not rows or any(r.status not in FINAL or r.next_attempt_at > now for r in rows):
                return None
            await conn.execute(
                update(t.queue)
                .where(t.queue.c.queue_id == queue_id)
                .values(next_attempt_at=lease_until)
            )
            return rows

        return await self.store.transact(unit)

    @staticmethod
    def removal(queue_id: str) -> Unit[None]:
        """A unit dropping the final rows of a message, and its body if no box holds it
        (run on its own by `remove_message`, or with a DSN's acceptance)."""

        async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
            blob_ids = {
                r[0]
                for r in await conn.execute(
                    select(t.queue.c.blob_id).where(t.queue.c.queue_id == queue_id)
                )
            }
            await conn.execute(
                delete(t.queue).where(t.queue.c.queue_id == queue_id, t.queue.c.status.in_(FINAL))
            )
            for blob_id in blob_ids:
                await delete_blob_if_unused(conn, blob_id)

        return unit

    async def remove_message(self, queue_id: str) -> None:
        await self.store.transact(self.removal(queue_id))

    @staticmethod
    def marking_delay_warned(ids: Sequence[int]) -> Unit[None]:
        """A unit marking rows as warned (committed with their delay DSN)."""

        async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
            await conn.execute(
                update(t.queue).where(t.queue.c.id.in_(list(ids))).values(delay_warned=True)
            )

        return unit

    # --- the operator (mss-relay queue ...) -------------------------------------------

    async def summary(self) -> tuple[int, dt.datetime | None]:
        """How many recipients wait for delivery, and the acceptance time of the oldest."""
        rows = await self._read(
            select(func.count(), func.min(t.queue.c.created_at)).where(
                t.queue.c.status.in_(PENDING)
            )
        )
        count, oldest = rows[0] if rows else (0, None)
        return int(count or 0), _aware(oldest)

    async def pending(self, status: str | None = None) -> list[QueueItem]:
        stmt = select(t.queue).order_by(t.queue.c.next_attempt_at, t.queue.c.id)
        if status is not None:
            stmt = stmt.where(t.queue.c.status == status)
        return [_item(r) for r in await self._read(stmt)]

    async def find(self, ident: str) -> list[QueueItem]:
        stmt = select(t.queue).where(parse_ident(ident)).order_by(t.queue.c.id)
        return [_item(r) for r in await self._read(stmt)]

    async def retry(
        self,
        ident: str,
        now: dt.datetime,
        event: Callable[[Sequence[QueueItem]], AuditEvent],
    ) -> list[QueueItem]:
        """Make queued and deferred rows due now (a row being sent is left alone)."""
        where = parse_ident(ident)
        now = _utc(now)

        async def unit(conn: AsyncConnection, ctx: TxContext) -> list[QueueItem]:
            stmt = select(t.queue).where(where, t.queue.c.status.in_(("queued", "deferred")))
            rows = [_item(r) for r in (await conn.execute(stmt)).all()]
            if rows:
                await conn.execute(
                    update(t.queue)
                    .where(t.queue.c.id.in_([r.id for r in rows]))
                    .values(next_attempt_at=now)
                )
                ctx.audit(event(rows))
            return rows

        return await self.store.transact(unit)

    async def bounce(
        self,
        ident: str,
        now: dt.datetime,
        reason: str,
        event: Callable[[Sequence[QueueItem]], AuditEvent],
    ) -> list[QueueItem]:
        """Give up pending rows now; the running daemon sends the DSN."""
        where = parse_ident(ident)
        now = _utc(now)

        async def unit(conn: AsyncConnection, ctx: TxContext) -> list[QueueItem]:
            stmt = select(t.queue).where(where, t.queue.c.status.in_(PENDING))
            rows = [_item(r) for r in (await conn.execute(stmt)).all()]
            if rows:
                await conn.execute(
                    update(t.queue)
                    .where(t.queue.c.id.in_([r.id for r in rows]))
                    .values(status="bounced", last_reply=reason, next_attempt_at=now)
                )
                ctx.audit(event(rows))
            return rows

        return await self.store.transact(unit)

    async def delete(
        self, ident: str, event: Callable[[Sequence[QueueItem]], AuditEvent]
    ) -> list[QueueItem]:
        """Delete rows without any notification; the body goes if nothing needs it."""
        where = parse_ident(ident)

        async def unit(conn: AsyncConnection, ctx: TxContext) -> list[QueueItem]:
            rows = [_item(r) for r in (await conn.execute(select(t.queue).where(where))).all()]
            if rows:
                await conn.execute(delete(t.queue).where(t.queue.c.id.in_([r.id for r in rows])))
                for blob_id in {r.blob_id for r in rows}:
                    await delete_blob_if_unused(conn, blob_id)
                ctx.audit(event(rows))
            return rows

        return await self.store.transact(unit)
