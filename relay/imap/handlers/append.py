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
from relay.store.mailstore import DELETED, SEEN


async def h_append(s: Session, cmd: c.Append) -> Result:
    target = await existing(s, cmd.mailbox, trycreate=True)
    need(s, target, "i", "add messages")
    have = rights(s, target)
    # RFC 4314 §4: flags the person may not set are dropped, not refused.
    allowed_flags = {
        f
        for f in cmd.flags
        if (f == SEEN and "s" in have)
        or (f == DELETED and "t" in have)
        or (f not in (SEEN, DELETED) and "w" in have)
    }
    meta: MessageMeta = await asyncio.to_thread(analyse, cmd.message)
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
            size_bytes=len(cmd.message),
            answer="OK",
        )

    uidvalidity, uid = await s.service.mail.append(
        target.box,
        target.folder,
        cmd.message,
        meta,
        frozenset(allowed_flags),
        when,
        person=seen_person(s, target.box),
        make_event=event,
    )
    return "APPEND completed", r.appenduid(uidvalidity, [uid])
