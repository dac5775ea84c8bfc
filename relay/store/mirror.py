"""Gateway mode, the store's side: which boxes are mirrored from an operator, who syncs
each (a lease), how far each folder is mirrored, the remote ↔ local UID map, the
down-sync's writes, and the journal of local changes to replay.

The journal is *written* by `relay.store.mailstore` (in the transaction of each local
change); here it is read, marked in flight, finished or refused. Down-sync writes
(new messages, the operator's flag changes and expunges) go through `MirrorStore` and
are never journaled: they come from the operator. Every write touches the folders it
changed, so IMAP sessions hear of it as of any other commit.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import schema as t
from relay.store.store import Store, TxContext

__all__ = ["JournalRow", "MirrorStore", "UpstreamBox"]


@dataclass(frozen=True, slots=True)
class UpstreamBox:
    """One box's row of `upstream_boxes`: what `mss-relay upstream status` shows."""

    box: str
    enabled: bool
    state: str
    lease_owner: str | None
    lease_until: dt.datetime | None
    last_sync_at: dt.datetime | None
    last_error: str | None
    last_error_at: dt.datetime | None
    capabilities: str | None
    progress_done: int
    progress_total: int
    sync_requested_at: dt.datetime | None
    replayed: int
    downloaded: int


@dataclass(frozen=True, slots=True)
class JournalRow:
    """A local change to replay to the operator (`upstream_journal`)."""

    id: int
    box: str
    kind: str
    folder_id: int | None
    folder: str | None
    data: dict[str, Any]
    person: str | None
    created_at: dt.datetime
    state: str
    attempts: int
    in_flight: dict[str, Any] | None
    last_error: str | None


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _box_row(r: Any) -> UpstreamBox:
    return UpstreamBox(
        box=r.box,
        enabled=bool(r.enabled),
        state=r.state,
        lease_owner=r.lease_owner,
        lease_until=_aware(r.lease_until),
        last_sync_at=_aware(r.last_sync_at),
        last_error=r.last_error,
        last_error_at=_aware(r.last_error_at),
        capabilities=r.capabilities,
        progress_done=int(r.progress_done),
        progress_total=int(r.progress_total),
        sync_requested_at=_aware(r.sync_requested_at),
        replayed=int(r.replayed),
        downloaded=int(r.downloaded),
    )


def _journal_row(r: Any) -> JournalRow:
    created = _aware(r.created_at)
    assert created is not None
    return JournalRow(
        id=int(r.id),
        box=r.box,
        kind=r.kind,
        folder_id=int(r.folder_id) if r.folder_id is not None else None,
        folder=r.folder,
        data=json.loads(r.data),
        person=r.person,
        created_at=created,
        state=r.state,
        attempts=int(r.attempts),
        in_flight=json.loads(r.in_flight) if r.in_flight else None,
        last_error=r.last_error,
    )


class MirrorStore:
    """SQL of gateway mode, over the `Store` (reads through `Store.read`, writes as
    units of the group-committing writer)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # --- which boxes are mirrored ------------------------------------------------------

    async def ensure_boxes(self, boxes: Iterable[str]) -> None:
        """Mirror exactly `boxes` (the config's boxes with an upstream): a row each,
        enabled; rows of boxes no longer listed are disabled (their journal stops
        growing; what is pending stays for `upstream status`)."""
        wanted = {b.lower() for b in boxes}

        async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
            have = {
                r.box: bool(r.enabled)
                for r in await conn.execute(
                    select(t.upstream_boxes.c.box, t.upstream_boxes.c.enabled)
                )
            }
            for box in sorted(wanted - have.keys()):
                await conn.execute(
                    insert(t.upstream_boxes).values(
                        box=box,
                        enabled=True,
                        state="never",
                        progress_done=0,
                        progress_total=0,
                        replayed=0,
                        downloaded=0,
                    )
                )
            for box, enabled in have.items():
                if enabled != (box in wanted):
                    await conn.execute(
                        update(t.upstream_boxes)
                        .where(t.upstream_boxes.c.box == box)
                        .values(enabled=box in wanted)
                    )

        await self.store.transact(unit)

    async def boxes(self) -> list[UpstreamBox]:
        async def read(conn: AsyncConnection) -> Sequence[Any]:
            return (
                await conn.execute(select(t.upstream_boxes).order_by(t.upstream_boxes.c.box))
            ).all()

        return [_box_row(r) for r in await self.store.read(read)]

    async def box(self, box: str) -> UpstreamBox | None:
        async def read(conn: AsyncConnection) -> Any:
            return (
                await conn.execute(
                    select(t.upstream_boxes).where(t.upstream_boxes.c.box == box.lower())
                )
            ).one_or_none()

        row = await self.store.read(read)
        return _box_row(row) if row is not None else None

    # --- the journal -----------------------------------------------------------------

    async def journal(self, box: str, *, state: str | None = None) -> list[JournalRow]:
        """The journal rows of `box` in replay order (all, or those in `state`)."""
        stmt = select(t.upstream_journal).where(t.upstream_journal.c.box == box.lower())
        if state is not None:
            stmt = stmt.where(t.upstream_journal.c.state == state)
        stmt = stmt.order_by(t.upstream_journal.c.id)

        async def read(conn: AsyncConnection) -> Sequence[Any]:
            return (await conn.execute(stmt)).all()

        return [_journal_row(r) for r in await self.store.read(read)]

    async def pending_count(self, box: str) -> int:
        async def read(conn: AsyncConnection) -> int:
            return int(
                (
                    await conn.execute(
                        select(func.count()).where(
                            and_(
                                t.upstream_journal.c.box == box.lower(),
                                t.upstream_journal.c.state == "pending",
                            )
                        )
                    )
                ).scalar_one()
            )

        return await self.store.read(read)

    async def forget_journal(self, ids: Sequence[int]) -> None:
        async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
            await conn.execute(delete(t.upstream_journal).where(t.upstream_journal.c.id.in_(ids)))

        await self.store.transact(unit)
