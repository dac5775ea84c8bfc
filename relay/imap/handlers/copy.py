"""COPY, MOVE and their UID forms (RFC 3501 §6.4.7, MOVE RFC 6851, COPYUID RFC 4315)."""

from __future__ import annotations

from relay.audit.events import AuditEvent, ImapCopied
from relay.imap import commands as c
from relay.imap import response as r
from relay.imap.handlers.common import (
    Result,
    TryCreate,
    existing,
    members,
    need,
    seen_person,
    selected,
    traced,
    who,
    writable,
)
from relay.imap.session import Session


async def h_copy(s: Session, cmd: c.Copy | c.Move) -> Result:
    sel = selected(s)
    move = isinstance(cmd, c.Move)
    need(s, sel.target, "r", "read messages")
    if move:
        writable(s)
        need(s, sel.target, "te", "move messages out (delete)")
    dest = await existing(s, cmd.mailbox, trycreate=True)
    need(s, dest, "i", "add messages")
    uids = members(sel, cmd.sequence_set, cmd.uid)
    verb = f"{'UID ' if cmd.uid else ''}{cmd.name}"
    if not uids:
        return f"{verb} completed", None
    dest_folder = await s.service.mail.folder(dest.box, dest.folder)
    if dest_folder is None:
        raise TryCreate("No such mailbox")
    traced_any = traced(s, sel.target.box) or traced(s, dest.box)

    def event(src: tuple[int, ...], mids: tuple[str, ...]) -> AuditEvent | None:
        if not traced_any:
            return None
        return ImapCopied(
            **who(s, sel.target.box, f"{verb} {cmd.mailbox} ({sel.name})"),
            folder=sel.target.folder,
            target_box=dest.box,
            target_folder=dest.folder,
            uids=src,
            message_ids=mids,
            moved=move,
            answer="OK",
        )

    res = await s.service.mail.copy(
        sel.folder.id,
        uids,
        dest_folder.id,
        source_person=sel.seen_person,
        dest_person=seen_person(s, dest.box),
        move=move,
        make_event=event,
    )
    if not res.source_uids:
        return f"{verb} completed", None
    code = r.copyuid(res.uidvalidity, res.source_uids, res.dest_uids)
    if move:
        # RFC 6851 §4.3: COPYUID in an untagged OK before the EXPUNGEs.
        s.emit(r.untagged_status(r.Status.OK, "Moved", code))
        s.forget_all(res.source_uids)  # EXPUNGEs, or VANISHED with QRESYNC
        return f"{verb} completed", None
    return f"{verb} completed", code
