"""Gateway mode, the DOWN direction's SQL: folder links, the remote ↔ local UID map as
the operator last showed it, and the writes of the down-sync (new messages sealed like
every message, the operator's flag changes, its expunges, a UIDVALIDITY re-match).

None of these writes is journaled (they come from the operator: `relay.store.mailstore`
journals only a co-holder's changes), and each one touches the folders it changed, so
co-holders' IMAP sessions (IDLE, NOOP) hear of it through the store's change
notifications exactly as of an SMTP delivery. `relay.upstream.sync` drives it.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.audit.events import AuditEvent
from relay.message.analysis import analyse
from relay.store import schema as t
from relay.store.mailstore import format_flags, parse_flags
from relay.store.store import Store, TxContext, offset_minutes
from relay.upstream.plan import Known, LocalCopy

__all__ = ["DownStore", "Downloaded", "FolderLink"]

_BUMP = (
    update(t.folders)
    .where(t.folders.c.id == bindparam("folder_id"))
    .values(
        uidnext=t.folders.c.uidnext + bindparam("n"),
        highestmodseq=t.folders.c.highestmodseq + 1,
    )
    .returning(t.folders.c.highestmodseq, t.folders.c.uidnext)
)


@dataclass(frozen=True, slots=True)
class FolderLink:
    """A local folder mirrored from the operator's folder `remote_name`."""

    folder_id: int
    box: str
    name: str
    remote_name: str
    uidvalidity: int  # the operator's, 0 before the first SELECT
    highestmodseq: int  # the operator's (CONDSTORE), 0 without
    resync: bool


@dataclass(frozen=True, slots=True)
class Downloaded:
    """One message fetched from the operator."""

    remote_uid: int
    raw: bytes
    flags: frozenset[str]
    internal_date: dt.datetime
    modseq: int


def _folder_name_superiors(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


class DownStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    # --- folder links --------------------------------------------------------------

    async def link(self, box: str, name: str, remote_name: str) -> FolderLink:
        """The local folder `name` of `box` linked to the operator's `remote_name`; the
        folder (and missing superiors) made if the operator has it and we do not,
        unjournaled (the operator made it)."""
        box = box.lower()

        async def unit(conn: AsyncConnection, ctx: TxContext) -> FolderLink:
            box_id = (
                await conn.execute(select(t.mailboxes.c.id).where(t.mailboxes.c.address == box))
            ).scalar_one()
            names = {
                str(r.name): int(r.id)
                for r in await conn.execute(
                    select(t.folders.c.name, t.folders.c.id).where(t.folders.c.mailbox_id == box_id)
                )
            }
            for wanted in [*_folder_name_superiors(name), name]:
                if wanted not in names:
                    names[wanted] = await self.store.create_folder_row(conn, box_id, wanted, None)
                    ctx.touch(names[wanted])
            fid = names[name]
            row = (
                await conn.execute(
                    select(t.upstream_folders).where(t.upstream_folders.c.folder_id == fid)
                )
            ).one_or_none()
            if row is None:
                await conn.execute(
                    insert(t.upstream_folders).values(
                        folder_id=fid,
                        box=box,
                        remote_name=remote_name,
                        uidvalidity=0,
                        highestmodseq=0,
                        uidnext=0,
                        resync=False,
                    )
                )
                return FolderLink(fid, box, name, remote_name, 0, 0, False)
            return FolderLink(
                fid,
                box,
                name,
                str(row.remote_name),
                int(row.uidvalidity),
                int(row.highestmodseq),
                bool(row.resync),
            )

        return await self.store.transact(unit)

    async def links(self, box: str) -> list[FolderLink]:
        async def read(conn: AsyncConnection) -> Sequence[Any]:
            return (
                await conn.execute(
                    select(t.upstream_folders, t.folders.c.name)
                    .join(t.folders, t.folders.c.id == t.upstream_folders.c.folder_id)
                    .where(t.upstream_folders.c.box == box.lower())
                )
            ).all()

        return [
            FolderLink(
                int(r.folder_id),
                str(r.box),
                str(r.name),
                str(r.remote_name),
                int(r.uidvalidity),
                int(r.highestmodseq),
                bool(r.resync),
            )
            for r in await self.store.read(read)
        ]

    async def known(self, folder_id: int) -> list[Known]:
        """The mirrored messages of a folder (remote UID, local UID, operator's flags)."""

        async def read(conn: AsyncConnection) -> Sequence[Any]:
            return (
                await conn.execute(
                    select(
                        t.upstream_messages.c.remote_uid,
                        t.upstream_messages.c.local_uid,
                        t.upstream_messages.c.flags,
                    ).where(t.upstream_messages.c.folder_id == folder_id)
                )
            ).all()

        return [
            Known(int(r.remote_uid), int(r.local_uid), parse_flags(r.flags))
            for r in await self.store.read(read)
        ]

    async def local_copies(self, folder_id: int) -> list[LocalCopy]:
        async def read(conn: AsyncConnection) -> Sequence[Any]:
            return (
                await conn.execute(
                    select(t.messages.c.uid, t.messages.c.message_id, t.messages.c.size).where(
                        t.messages.c.folder_id == folder_id
                    )
                )
            ).all()

        return [
            LocalCopy(int(r.uid), r.message_id, int(r.size)) for r in await self.store.read(read)
        ]

    async def folder_synced(
        self, folder_id: int, *, uidvalidity: int, highestmodseq: int, uidnext: int
    ) -> None:
        async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
            await conn.execute(
                update(t.upstream_folders)
                .where(t.upstream_folders.c.folder_id == folder_id)
                .values(
                    uidvalidity=uidvalidity,
                    highestmodseq=highestmodseq,
                    uidnext=uidnext,
                    synced_at=self.store.clock(),
                    resync=False,
                )
            )

        await self.store.transact(unit)

    # --- the down-sync's writes ------------------------------------------------------

    async def add(
        self, link: FolderLink, uidvalidity: int, items: Sequence[Downloaded]
    ) -> list[int]:
        """New messages from the operator, sealed like every message, under new local
        UIDs in the operator's order, mapped in the same transaction (a crash leaves
        either the message and its map row or neither: no duplicate at restart).
        Remote UIDs already mapped are skipped. Returns the new local UIDs."""
        if not items:
            return []
        sealed = []
        for m in items:
            blob_id = secrets.token_hex(16)
            meta = analyse(m.raw)
            sealed.append(
                (
                    m,
                    blob_id,
                    self.store.cipher.seal(blob_id, m.raw),
                    self.store.seal_meta(blob_id, meta.to_json()),
                    meta.message_id,
                )
            )

        async def unit(conn: AsyncConnection, ctx: TxContext) -> list[int]:
            mapped = {
                int(r.remote_uid)
                for r in await conn.execute(
                    select(t.upstream_messages.c.remote_uid).where(
                        and_(
                            t.upstream_messages.c.folder_id == link.folder_id,
                            t.upstream_messages.c.remote_uid.in_([m.remote_uid for m in items]),
                        )
                    )
                )
            }
            todo = [s for s in sealed if s[0].remote_uid not in mapped]
            if not todo:
                return []
            row = (await conn.execute(_BUMP, {"folder_id": link.folder_id, "n": len(todo)})).one()
            modseq, first = int(row.highestmodseq), int(row.uidnext) - len(todo)
            now = self.store.clock()
            uids = [first + n for n in range(len(todo))]
            # One multi-row statement per table (executemany): a batch is three
            # statements, not three per message (PostgreSQL round trips).
            await conn.execute(
                insert(t.blobs),
                [
                    {"id": b, "size": len(m.raw), "data": data, "meta": meta, "created_at": now}
                    for m, b, data, meta, _ in todo
                ],
            )
            await conn.execute(
                insert(t.messages),
                [
                    {
                        "folder_id": link.folder_id,
                        "uid": uid,
                        "modseq": modseq,
                        "blob_id": b,
                        # the instant in UTC (SQLite keeps no zone) and the zone apart
                        "internal_date": m.internal_date.astimezone(dt.UTC),
                        "internal_offset": offset_minutes(m.internal_date),
                        "size": len(m.raw),
                        "flags": format_flags(m.flags),
                        "message_id": message_id,
                    }
                    for uid, (m, b, _, _, message_id) in zip(uids, todo, strict=True)
                ],
            )
            await conn.execute(
                insert(t.upstream_messages),
                [
                    {
                        "folder_id": link.folder_id,
                        "remote_uid": m.remote_uid,
                        "local_uid": uid,
                        "modseq": m.modseq,
                        "flags": format_flags(m.flags),
                    }
                    for uid, (m, *_rest) in zip(uids, todo, strict=True)
                ],
            )
            await conn.execute(
                update(t.upstream_boxes)
                .where(t.upstream_boxes.c.box == link.box)
                .values(downloaded=t.upstream_boxes.c.downloaded + len(todo))
            )
            ctx.touch(link.folder_id)
            return uids

        return await self.store.transact(unit)

    async def apply_flags(
        self, folder_id: int, changes: Sequence[tuple[int, int, frozenset[str]]]
    ) -> None:
        """The operator's flags (local UID, remote UID, flags) set locally and recorded
        as last seen, in one transaction under one new MODSEQ."""
        if not changes:
            return

        async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
            row = (await conn.execute(_BUMP, {"folder_id": folder_id, "n": 0})).one()
            modseq = int(row.highestmodseq)
            for local_uid, remote_uid, flags in changes:
                await conn.execute(
                    update(t.messages)
                    .where(and_(t.messages.c.folder_id == folder_id, t.messages.c.uid == local_uid))
                    .values(flags=format_flags(flags), modseq=modseq)
                )
                await conn.execute(
                    update(t.upstream_messages)
                    .where(
                        and_(
                            t.upstream_messages.c.folder_id == folder_id,
                            t.upstream_messages.c.remote_uid == remote_uid,
                        )
                    )
                    .values(flags=format_flags(flags))
                )
            ctx.touch(folder_id)

        await self.store.transact(unit)

    async def expunge(self, folder_id: int, pairs: Sequence[tuple[int, int]]) -> None:
        """Messages the operator expunged (local UID, remote UID): removed locally
        (sessions get EXPUNGE / VANISHED as for any expunge) and unmapped."""
        if not pairs:
            return

        async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
            await _remove_local(conn, ctx, folder_id, [local for local, _ in pairs])
            remote = [r for _, r in pairs]
            for i in range(0, len(remote), 500):
                await conn.execute(
                    delete(t.upstream_messages).where(
                        and_(
                            t.upstream_messages.c.folder_id == folder_id,
                            t.upstream_messages.c.remote_uid.in_(remote[i : i + 500]),
                        )
                    )
                )

        await self.store.transact(unit)

    async def rematched(
        self,
        folder_id: int,
        uidvalidity: int,
        pairs: Sequence[tuple[int, int, frozenset[str]]],
        dropped: Sequence[int],
    ) -> None:
        """After a UIDVALIDITY change at the operator: the map rebuilt from the pairs
        (local UID, new remote UID, flags), local messages with no pair removed, the
        new UIDVALIDITY recorded, in one transaction."""

        async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
            await conn.execute(
                delete(t.upstream_messages).where(t.upstream_messages.c.folder_id == folder_id)
            )
            if pairs:
                await conn.execute(
                    insert(t.upstream_messages),
                    [
                        {
                            "folder_id": folder_id,
                            "remote_uid": r,
                            "local_uid": local,
                            "modseq": 0,
                            "flags": format_flags(flags),
                        }
                        for local, r, flags in pairs
                    ],
                )
            await _remove_local(conn, ctx, folder_id, dropped)
            await conn.execute(
                update(t.upstream_folders)
                .where(t.upstream_folders.c.folder_id == folder_id)
                .values(uidvalidity=uidvalidity, highestmodseq=0)
            )

        await self.store.transact(unit)

    # --- the box's state (`mss-relay upstream status`) -------------------------------

    async def set_state(
        self,
        box: str,
        state: str,
        *,
        error: str | None = None,
        capabilities: str | None = None,
        synced: bool = False,
        event: AuditEvent | None = None,
    ) -> None:
        values: dict[str, Any] = {"state": state}
        now = self.store.clock()
        if error is not None:
            values.update(last_error=error[:1000], last_error_at=now)
        if capabilities is not None:
            values["capabilities"] = capabilities[:4000]
        if synced:
            values["last_sync_at"] = now

        async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
            await conn.execute(
                update(t.upstream_boxes)
                .where(t.upstream_boxes.c.box == box.lower())
                .values(**values)
            )
            if event is not None:
                ctx.audit(event)

        await self.store.transact(unit)


async def _remove_local(
    conn: AsyncConnection, ctx: TxContext, folder_id: int, uids: Sequence[int]
) -> None:
    """Remove local messages under one new MODSEQ, recording the expunge for QRESYNC."""
    if not uids:
        return
    rows: list[Any] = []
    for i in range(0, len(uids), 500):
        rows += (
            await conn.execute(
                select(t.messages.c.id, t.messages.c.uid).where(
                    and_(
                        t.messages.c.folder_id == folder_id,
                        t.messages.c.uid.in_(list(uids[i : i + 500])),
                    )
                )
            )
        ).all()
    if not rows:
        return
    row = (await conn.execute(_BUMP, {"folder_id": folder_id, "n": 0})).one()
    modseq = int(row.highestmodseq)
    ids = [int(r.id) for r in rows]
    for i in range(0, len(ids), 500):
        await conn.execute(delete(t.seen).where(t.seen.c.message_id.in_(ids[i : i + 500])))
        await conn.execute(delete(t.messages).where(t.messages.c.id.in_(ids[i : i + 500])))
    await conn.execute(
        insert(t.expunged),
        [{"folder_id": folder_id, "uid": int(r.uid), "modseq": modseq} for r in rows],
    )
    ctx.touch(folder_id)


async def mirrored_counts(store: Store) -> dict[str, int]:
    """Box -> messages mirrored (rows of the remote ↔ local UID map)."""

    async def read(conn: AsyncConnection) -> Sequence[Any]:
        return (
            await conn.execute(
                select(t.upstream_folders.c.box, func.count())
                .select_from(
                    t.upstream_messages.join(
                        t.upstream_folders,
                        t.upstream_folders.c.folder_id == t.upstream_messages.c.folder_id,
                    )
                )
                .group_by(t.upstream_folders.c.box)
            )
        ).all()

    return {str(r[0]): int(r[1]) for r in await store.read(read)}
