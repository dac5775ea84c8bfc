"""Patient conversations in the store (SQL for relay.policy.patient)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import schema as t
from relay.store.store import Store


@dataclass(frozen=True, slots=True)
class Conversation:
    box: str
    ins: str
    state: str  # open | closed
    opened_by: str
    opened_at: dt.datetime
    closed_at: dt.datetime | None
    updated_at: dt.datetime
    last_message_id: str | None
    messages: int


def _row(r: object) -> Conversation:
    def aware(v: dt.datetime | None) -> dt.datetime | None:
        return v if v is None or v.tzinfo else v.replace(tzinfo=dt.UTC)

    return Conversation(
        box=r.box,  # type: ignore[attr-defined]
        ins=r.ins,  # type: ignore[attr-defined]
        state=r.state,  # type: ignore[attr-defined]
        opened_by=r.opened_by,  # type: ignore[attr-defined]
        opened_at=aware(r.opened_at),  # type: ignore[attr-defined, arg-type]
        closed_at=aware(r.closed_at),  # type: ignore[attr-defined]
        updated_at=aware(r.updated_at),  # type: ignore[attr-defined, arg-type]
        last_message_id=r.last_message_id,  # type: ignore[attr-defined]
        messages=r.messages,  # type: ignore[attr-defined]
    )


async def get(store: Store, box: str, ins: str) -> Conversation | None:
    async def read(conn: AsyncConnection) -> Conversation | None:
        row = (
            await conn.execute(
                select(t.conversations).where(
                    t.conversations.c.box == box.lower(), t.conversations.c.ins == ins
                )
            )
        ).one_or_none()
        return _row(row) if row is not None else None

    return await store.read(read)


async def for_box(store: Store, box: str) -> list[Conversation]:
    async def read(conn: AsyncConnection) -> list[Conversation]:
        rows = (
            await conn.execute(
                select(t.conversations)
                .where(t.conversations.c.box == box.lower())
                .order_by(t.conversations.c.updated_at.desc())
            )
        ).all()
        return [_row(r) for r in rows]

    return await store.read(read)


async def record(
    conn: AsyncConnection,
    *,
    box: str,
    ins: str,
    now: dt.datetime,
    message_id: str | None,
    close: bool,
    opened_by: str,
) -> str:
    """Inside an acceptance: open, continue or close the (box, INS) conversation.

    Returns what happened: "opened", "reopened", "continued" or "closed"."""
    box = box.lower()
    row = (
        await conn.execute(
            select(t.conversations.c.state, t.conversations.c.messages).where(
                t.conversations.c.box == box, t.conversations.c.ins == ins
            )
        )
    ).one_or_none()
    state = "closed" if close else "open"
    if row is None:
        await conn.execute(
            insert(t.conversations).values(
                box=box,
                ins=ins,
                state=state,
                opened_by=opened_by,
                opened_at=now,
                closed_at=now if close else None,
                updated_at=now,
                last_message_id=message_id,
                messages=1,
            )
        )
        return "closed" if close else "opened"
    values: dict[str, object] = {
        "state": state,
        "updated_at": now,
        "last_message_id": message_id,
        "messages": int(row.messages) + 1,
    }
    if close:
        values["closed_at"] = now
        outcome = "closed"
    elif row.state == "closed":
        values.update(closed_at=None, opened_at=now, opened_by=opened_by)
        outcome = "reopened"
    else:
        outcome = "continued"
    await conn.execute(
        update(t.conversations)
        .where(t.conversations.c.box == box, t.conversations.c.ins == ins)
        .values(**values)
    )
    return outcome
