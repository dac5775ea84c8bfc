"""APPEND (RFC 3501 §6.3.11; UIDPLUS RFC 4315 APPENDUID; APPENDLIMIT RFC 7889)."""

from __future__ import annotations

import asyncio
import datetime as dt

from relay.audit.events import AuditEvent, ImapAppended
from relay.imap import commands as c
from relay.imap import response as r
from relay.imap.handlers.common import Result, existing, need, rights, seen_person, traced, who
from relay.imap.session import Session
from relay.message.analysis import MessageMeta, analyse
from relay.message.binary import encode_binary_parts
from relay.store.mailstore import DELETED, SEEN


def settable(have: str, flags: tuple[str, ...]) -> frozenset[str]:
    """The flags a person with rights `have` may set on a new message: the others are
    dropped, not refused (RFC 4314 §4)."""
    return frozenset(
        f
        for f in flags
        if (f == SEEN and "s" in have)
        or (f == DELETED and "t" in have)
        or (f not in (SEEN, DELETED) and "w" in have)
    )


def prepared(raw: bytes, binary: bool) -> tuple[bytes, MessageMeta]:
    """The octets to store and their metadata: binary content sent as a literal8 is
    stored base64-encoded (RFC 3516 §4.4, `relay.message.binary`)."""
    meta = analyse(raw)
    if binary:
        encoded = encode_binary_parts(raw, meta)
        if encoded is not raw:
            return encoded, analyse(encoded)
    return raw, meta


# Up to this size a message is analysed on the event loop's thread: handing it to a
# thread and waking the loop again costs more than parsing a letter, and the parse
# holds the GIL either way. A bigger one goes to a thread, so that a 25 MB attachment
# does not hold every other session up for the whole parse.
INLINE_ANALYSIS_BYTES = 64 * 1024


async def prepare(raw: bytes, binary: bool) -> tuple[bytes, MessageMeta]:
    """`prepared`, here or in a thread by the message's size."""
    if len(raw) <= INLINE_ANALYSIS_BYTES:
        return prepared(raw, binary)
    return await asyncio.to_thread(prepared, raw, binary)


async def h_append(s: Session, cmd: c.Append) -> Result:
    target = await existing(s, cmd.mailbox, trycreate=True)
    need(s, target, "i", "add messages")
    allowed_flags = settable(rights(s, target), cmd.flags)
    raw, meta = await prepare(cmd.message, cmd.binary)
    when = cmd.internal_date or dt.datetime.now(dt.UTC)
    traced_box = traced(s, target.box)

    def event(uid: int) -> AuditEvent | None:
        if not traced_box:
            return None
        return ImapAppended(
            **who(s, target.box, f"APPEND {cmd.mailbox}"),
            folder=target.folder,
            uid=uid,
            message_id=meta.message_id,
            size_bytes=len(raw),
            answer="OK",
        )

    uidvalidity, uid = await s.service.mail.append(
        target.box,
        target.folder,
        raw,
        meta,
        allowed_flags,
        when,
        person=seen_person(s, target.box),
        make_event=event,
    )
    return "APPEND completed", r.appenduid(uidvalidity, [uid])
