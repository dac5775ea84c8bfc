"""Gateway mode, the UP direction's SQL: the journal rows to replay, the remote UIDs of
local messages, and each replay's outcome committed in one transaction with the row.

`relay.upstream.replayer` drives it. The three writes of a row's life:

- `mark_in_flight` (its own commit, *before* the operator is asked a command that is
  not idempotent): what was about to be sent, so that a replay cut by a crash looks
  before it sends again;
- `finish`: the row removed, the remote ↔ local UID map and the operator's MODSEQ and
  flags updated, folder links made or renamed, `upstream_boxes.replayed` counted, in
  one transaction: a change is replayed once;
- `refuse`: the row kept as `refused` with the operator's answer, an audit event, and
  the local state brought back to the operator's in the same transaction (what the
  operator still has comes back down: its UID map rows are forgotten and the folder
  re-compared by the down sync; what it refused to take is removed here, unjournaled).

`refused_changes` is what `mss-relay upstream status` shows of refusals.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.audit.events import AuditEvent
from relay.store import schema as t
from relay.store.mailstore import format_flags, parse_flags
from relay.store.mirror import JournalRow, MirrorStore
from relay.store.store import Store, TxContext

__all__ = [
    "LocalMessage",
    "Mapping",
    "RefusedChange",
    "ReplayStore",
    "Replayed",
    "Restore",
]

_BUMP = (
    update(t.folders)
    .where(t.folders.c.id == bindparam("folder_id"))
    .values(highestmodseq=t.folders.c.highestmodseq + 1)
    .returning(t.folders.c.highestmodseq)
)


@dataclass(frozen=True, slots=True)
class Mapping:
    """A local message and its copy at the operator (`upstream_messages`)."""

    folder_id: int
    remote_uid: int
    local_uid: int
    modseq: int
    flags: frozenset[str]


@dataclass(frozen=True, slots=True)
class LocalMessage:
    """What an APPEND to the operator needs of a local message."""

    uid: int
    raw: bytes
    flags: frozenset[
        str
    ]  # the box's flags, with \\Seen as the co-holder who made the change has it
    internal_date: dt.datetime
    message_id: str | None


@dataclass(frozen=True, slots=True)
class Replayed:
    """What a replayed row changed in the map, committed with the row's removal."""

    mapped: tuple[Mapping, ...] = ()  # new remote copies (APPENDUID, COPYUID, a search)
    updated: tuple[Mapping, ...] = ()  # MODSEQ / flags the operator answered
    unmapped: tuple[tuple[int, int], ...] = ()  # (folder_id, remote_uid) gone there
    resync: frozenset[int] = frozenset()  # folders to re-compare ([MODIFIED])
    link: tuple[int, str] | None = None  # (folder_id, remote name) of a created folder
    renamed: tuple[str, str] | None = None  # (old remote name, new remote name)
    note: str | None = None  # for the log: "already at the operator", ...


@dataclass(frozen=True, slots=True)
class Restore:
    """How the local state goes back to the operator's after a refusal."""

    forget: tuple[tuple[int, int], ...] = ()  # map rows to drop: the message comes back
    remove_local: tuple[tuple[int, tuple[int, ...]], ...] = ()  # (folder_id, local UIDs)
    resync: frozenset[int] = frozenset()
    rename_back: tuple[str, str, str] | None = None  # (box, current name, old name)
    drop_folder: tuple[str, str] | None = None  # (box, name): a folder it would not make


@dataclass(frozen=True, slots=True)
class RefusedChange:
    """A local change the operator refused (`upstream status`)."""

    id: int
    box: str
    kind: str
    folder: str | None
    person: str | None
    created_at: dt.datetime
    answer: str | None
    data: dict[str, Any] = field(default_factory=dict)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


class ReplayStore:
    """The replay's reads and writes (one instance per daemon or CLI run)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.mirror = MirrorStore(store)

    # --- reads ------------------------------------------------------------------------

    async def pending(self, box: str) -> list[JournalRow]:
        return await self.mirror.journal(box, state="pending")

    async def remote_folder(self, folder_id: int) -> tuple[str, int] | None:
        """(the operator's name, UIDVALIDITY as mirrored, 0 if never selected) of a
        local folder, when it is linked to one at the operator."""

        async def read(conn: AsyncConnection) -> tuple[str, int] | None:
            row = (
                await conn.execute(
                    select(
                        t.upstream_folders.c.remote_name, t.upstream_folders.c.uidvalidity
                    ).where(t.upstream_folders.c.folder_id == folder_id)
                )
            ).one_or_none()
            return (str(row.remote_name), int(row.uidvalidity)) if row is not None else None

        return await self.store.read(read)

    async def mapped_remote(self, folder_id: int, remote_uids: Sequence[int]) -> set[int]:
        """Which of these remote UIDs already stand for a local message."""
        if not remote_uids:
            return set()
        stmt = select(t.upstream_messages.c.remote_uid).where(
            and_(
                t.upstream_messages.c.folder_id == folder_id,
                t.upstream_messages.c.remote_uid.in_(list(set(remote_uids))),
            )
        )

        async def read(conn: AsyncConnection) -> set[int]:
            return {int(v) for v in (await conn.execute(stmt)).scalars()}

        return await self.store.read(read)

    async def remote_uids(self, folder_id: int, local_uids: Sequence[int]) -> dict[int, Mapping]:
        """Local UID -> its mapping, for the given local UIDs that have one."""
        if not local_uids:
            return {}
        stmt = select(t.upstream_messages).where(
            and_(
                t.upstream_messages.c.folder_id == folder_id,
                t.upstream_messages.c.local_uid.in_(list(set(local_uids))),
            )
        )

        async def read(conn: AsyncConnection) -> Sequence[Any]:
            return (await conn.execute(stmt)).all()

        return {
            int(r.local_uid): Mapping(
                folder_id,
                int(r.remote_uid),
                int(r.local_uid),
                int(r.modseq),
                parse_flags(r.flags),
            )
            for r in await self.store.read(read)
        }

    async def local_messages(
        self, folder_id: int, uids: Sequence[int], *, person: str | None = None
    ) -> list[LocalMessage]:
        """The local messages still there among `uids`, in UID order, decrypted. In a
        box with per-person \\Seen, `person`'s \\Seen counts (the co-holder who put the
        message there: their Sent copy is read at the operator too)."""
        if not uids:
            return []
        seen = t.seen.alias("person_seen")
        stmt = (
            select(
                t.messages.c.uid,
                t.messages.c.flags,
                t.messages.c.internal_date,
                t.messages.c.message_id,
                t.blobs.c.id.label("blob_id"),
                t.blobs.c.data,
                seen.c.person.label("seen_by"),
            )
            .select_from(
                t.messages.join(t.blobs, t.blobs.c.id == t.messages.c.blob_id).outerjoin(
                    seen,
                    and_(seen.c.message_id == t.messages.c.id, seen.c.person == (person or "")),
                )
            )
            .where(and_(t.messages.c.folder_id == folder_id, t.messages.c.uid.in_(list(set(uids)))))
            .order_by(t.messages.c.uid)
        )

        async def read(conn: AsyncConnection) -> Sequence[Any]:
            return (await conn.execute(stmt)).all()

        return [
            LocalMessage(
                uid=int(r.uid),
                raw=self.store.cipher.open(r.blob_id, bytes(r.data)),
                flags=parse_flags(r.flags) | ({"\\Seen"} if r.seen_by else set()),
                internal_date=_aware(r.internal_date),
                message_id=r.message_id,
            )
            for r in await self.store.read(read)
        ]

    async def refused_changes(self, box: str | None = None) -> list[RefusedChange]:
        """The changes the operator refused, oldest first (all boxes, or `box`)."""
        stmt = select(t.upstream_journal).where(t.upstream_journal.c.state == "refused")
        if box is not None:
            stmt = stmt.where(t.upstream_journal.c.box == box.lower())
        stmt = stmt.order_by(t.upstream_journal.c.id)

        async def read(conn: AsyncConnection) -> Sequence[Any]:
            return (await conn.execute(stmt)).all()

        return [
            RefusedChange(
                id=int(r.id),
                box=r.box,
                kind=r.kind,
                folder=r.folder,
                person=r.person,
                created_at=_aware(r.created_at),
                answer=r.last_error,
                data=json.loads(r.data),
            )
            for r in await self.store.read(read)
        ]

    # --- writes -----------------------------------------------------------------------

    async def mark_in_flight(self, row_id: int, note: dict[str, Any]) -> None:
        """Committed before the command goes out (see the module docstring)."""
        text = json.dumps(note, separators=(",", ":"), sort_keys=True)

        async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
            await conn.execute(
                update(t.upstream_journal)
                .where(t.upstream_journal.c.id == row_id)
                .values(in_flight=text, attempts=t.upstream_journal.c.attempts + 1)
            )

        await self.store.transact(unit)

    async def defer(self, row_id: int, error: str) -> None:
        """Not done, not refused: the row stays in order (its in-flight note too: the
        command may have reached the operator)."""

        async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
            await conn.execute(
                update(t.upstream_journal)
                .where(t.upstream_journal.c.id == row_id)
                .values(last_error=error[:1000])
            )

        await self.store.transact(unit)

    async def finish(self, row: JournalRow, done: Replayed) -> None:
        """The row replayed: removed, with its effect on the map, in one transaction."""

        async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
            gone = (
                await conn.execute(
                    delete(t.upstream_journal).where(
                        and_(
                            t.upstream_journal.c.id == row.id,
                            t.upstream_journal.c.state == "pending",
                        )
                    )
                )
            ).rowcount
            if not gone:
                return  # finished by someone else (the lease makes this rare): once only
            for fid, ruid in done.unmapped:
                await conn.execute(
                    delete(t.upstream_messages).where(
                        and_(
                            t.upstream_messages.c.folder_id == fid,
                            t.upstream_messages.c.remote_uid == ruid,
                        )
                    )
                )
            for m in done.mapped:
                # A remote UID is mapped once: a row left by an earlier attempt goes.
                await conn.execute(
                    delete(t.upstream_messages).where(
                        and_(
                            t.upstream_messages.c.folder_id == m.folder_id,
                            (t.upstream_messages.c.remote_uid == m.remote_uid)
                            | (t.upstream_messages.c.local_uid == m.local_uid),
                        )
                    )
                )
                await conn.execute(
                    insert(t.upstream_messages).values(
                        folder_id=m.folder_id,
                        remote_uid=m.remote_uid,
                        local_uid=m.local_uid,
                        modseq=m.modseq,
                        flags=format_flags(m.flags),
                    )
                )
            for m in done.updated:
                await conn.execute(
                    update(t.upstream_messages)
                    .where(
                        and_(
                            t.upstream_messages.c.folder_id == m.folder_id,
                            t.upstream_messages.c.remote_uid == m.remote_uid,
                        )
                    )
                    .values(modseq=m.modseq, flags=format_flags(m.flags))
                )
            if done.resync:
                await _resync(conn, done.resync)
            if done.link is not None:
                fid, name = done.link
                exists = (
                    await conn.execute(
                        select(t.upstream_folders.c.folder_id).where(
                            t.upstream_folders.c.folder_id == fid
                        )
                    )
                ).one_or_none()
                live = (
                    await conn.execute(select(t.folders.c.id).where(t.folders.c.id == fid))
                ).one_or_none()
                if exists is None and live is not None:
                    await conn.execute(
                        insert(t.upstream_folders).values(
                            folder_id=fid,
                            box=row.box,
                            remote_name=name,
                            uidvalidity=0,  # not selected yet: the down sync will
                            highestmodseq=0,
                            uidnext=0,
                            resync=False,
                        )
                    )
            if done.renamed is not None:
                await _rename_links(conn, row.box, *done.renamed)
            await conn.execute(
                update(t.upstream_boxes)
                .where(t.upstream_boxes.c.box == row.box)
                .values(replayed=t.upstream_boxes.c.replayed + 1)
            )

        await self.store.transact(unit)

    async def refuse(
        self, row: JournalRow, answer: str, restore: Restore, event: AuditEvent
    ) -> None:
        """The operator refused the change: kept as `refused` with its answer, audited,
        and the local state brought back to the operator's, in one transaction."""
        now = self.store.clock()

        async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
            changed = (
                await conn.execute(
                    update(t.upstream_journal)
                    .where(
                        and_(
                            t.upstream_journal.c.id == row.id,
                            t.upstream_journal.c.state == "pending",
                        )
                    )
                    .values(state="refused", last_error=answer[:1000], in_flight=None)
                )
            ).rowcount
            if not changed:
                return
            ctx.audit(event)
            for fid, ruid in restore.forget:
                await conn.execute(
                    delete(t.upstream_messages).where(
                        and_(
                            t.upstream_messages.c.folder_id == fid,
                            t.upstream_messages.c.remote_uid == ruid,
                        )
                    )
                )
            for fid, uids in restore.remove_local:
                await _remove_local(conn, ctx, fid, uids)
            resync = set(restore.resync)
            if restore.rename_back is not None:
                resync |= await _rename_back(conn, ctx, *restore.rename_back)
            if restore.drop_folder is not None:
                await _drop_empty_folder(conn, ctx, *restore.drop_folder)
            if resync:
                await _resync(conn, frozenset(resync))
            await conn.execute(
                update(t.upstream_boxes)
                .where(t.upstream_boxes.c.box == row.box)
                .values(
                    last_error=f"change {row.id} ({row.kind}) refused: {answer}"[:1000],
                    last_error_at=now,
                )
            )

        await self.store.transact(unit)
        # Folder names changed under the store's name -> id cache.
        if restore.rename_back is not None:
            box, current, old = restore.rename_back
            self.store.forget_folder(box, current)
            self.store.forget_folder(box, old)
        if restore.drop_folder is not None:
            self.store.forget_folder(*restore.drop_folder)


async def _resync(conn: AsyncConnection, folder_ids: frozenset[int]) -> None:
    await conn.execute(
        update(t.upstream_folders)
        .where(t.upstream_folders.c.folder_id.in_(sorted(folder_ids)))
        .values(resync=True)
    )


async def _remove_local(
    conn: AsyncConnection, ctx: TxContext, folder_id: int, uids: Sequence[int]
) -> None:
    """Remove local messages the operator would not take, without a journal row (the
    operator never had them). Sessions learn of it as of any expunge."""
    rows = (
        await conn.execute(
            select(t.messages.c.id, t.messages.c.uid).where(
                and_(t.messages.c.folder_id == folder_id, t.messages.c.uid.in_(list(uids)))
            )
        )
    ).all()
    if not rows:
        return
    modseq = (await conn.execute(_BUMP, {"folder_id": folder_id})).scalar_one()
    ids = [int(r.id) for r in rows]
    await conn.execute(delete(t.seen).where(t.seen.c.message_id.in_(ids)))
    await conn.execute(delete(t.messages).where(t.messages.c.id.in_(ids)))
    await conn.execute(
        insert(t.expunged),
        [{"folder_id": folder_id, "uid": int(r.uid), "modseq": modseq} for r in rows],
    )
    ctx.touch(folder_id)


async def _box_folders(conn: AsyncConnection, box: str) -> dict[str, int]:
    rows = (
        await conn.execute(
            select(t.folders.c.name, t.folders.c.id)
            .select_from(t.folders.join(t.mailboxes, t.mailboxes.c.id == t.folders.c.mailbox_id))
            .where(t.mailboxes.c.address == box.lower())
        )
    ).all()
    return {str(r.name): int(r.id) for r in rows}


async def _rename_back(
    conn: AsyncConnection, ctx: TxContext, box: str, current: str, old: str
) -> set[int]:
    """Undo a local RENAME the operator refused (children included), unjournaled."""
    names = await _box_folders(conn, box)
    moved = [n for n in names if n == current or n.startswith(current + "/")]
    if not moved or any(old + n[len(current) :] in names for n in moved):
        return set()  # the name is taken again locally: the down sync sorts it out
    for n in moved:
        await conn.execute(
            update(t.folders).where(t.folders.c.id == names[n]).values(name=old + n[len(current) :])
        )
        ctx.touch(names[n])
    return {names[n] for n in moved}


async def _drop_empty_folder(conn: AsyncConnection, ctx: TxContext, box: str, name: str) -> None:
    """A folder the operator would not create goes locally if nothing is in it (its
    messages, if any, were refused with their own rows)."""
    fid = (await _box_folders(conn, box)).get(name)
    if fid is None:
        return
    count = (
        await conn.execute(select(func.count()).where(t.messages.c.folder_id == fid))
    ).scalar_one()
    if count:
        return
    await conn.execute(delete(t.expunged).where(t.expunged.c.folder_id == fid))
    await conn.execute(delete(t.folders).where(t.folders.c.id == fid))
    ctx.touch(fid)


async def _rename_links(conn: AsyncConnection, box: str, old: str, new: str) -> None:
    """The operator's names of a renamed folder and its children, in the links."""
    rows = (
        await conn.execute(
            select(t.upstream_folders.c.folder_id, t.upstream_folders.c.remote_name).where(
                t.upstream_folders.c.box == box
            )
        )
    ).all()
    for r in rows:
        name = str(r.remote_name)
        if name == old or name.startswith(old + "/"):
            await conn.execute(
                update(t.upstream_folders)
                .where(t.upstream_folders.c.folder_id == r.folder_id)
                .values(remote_name=new + name[len(old) :])
            )
