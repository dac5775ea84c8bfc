"""STORE (RFC 3501 §6.4.6, CONDSTORE RFC 7162), EXPUNGE and UID EXPUNGE (UIDPLUS),
CLOSE and UNSELECT (RFC 3691).
"""

from __future__ import annotations

from relay.audit.events import AuditEvent, ImapExpunged, ImapFlagsChanged
from relay.imap import commands as c
from relay.imap import response as r
from relay.imap.handlers.common import (
    Result,
    members,
    need,
    rights,
    selected,
    traced,
    who,
    writable,
)
from relay.imap.session import Selected, Session
from relay.store.mailstore import DELETED, SEEN


async def h_close(s: Session, cmd: c.Close | c.Unselect) -> Result:
    sel = selected(s)
    if isinstance(cmd, c.Close) and not sel.read_only and "e" in rights(s, sel.target):
        # RFC 3501 §6.4.2: expunge silently, no untagged EXPUNGE.
        await _expunge(s, sel, None, f"CLOSE ({sel.name})")
    s.deselect()
    return f"{cmd.name} completed", None


async def _expunge(
    s: Session, sel: Selected, uids: list[int] | None, request: str
) -> list[tuple[int, str | None]]:
    box = sel.target.box
    traced_box = traced(s, box)

    def event(gone: tuple[int, ...], mids: tuple[str, ...]) -> AuditEvent | None:
        if not traced_box:
            return None
        return ImapExpunged(
            **who(s, box, request),
            folder=sel.target.folder,
            uids=gone,
            message_ids=mids,
            answer="OK",
        )

    return await s.service.expunge(sel.folder.id, uids, event)


async def h_expunge(s: Session, cmd: c.Expunge) -> Result:
    sel = writable(s)
    need(s, sel.target, "e", "expunge messages")
    uids: list[int] | None = None
    if cmd.uids is not None:
        uids = members(sel, cmd.uids, True)
    gone = await _expunge(s, sel, uids, f"{'UID ' if uids is not None else ''}EXPUNGE ({sel.name})")
    s.forget_all(uid for uid, _ in gone)
    code: r.Code | None = None
    if "QRESYNC" in s.enabled:
        # The client learns the MODSEQ of its expunge (as Dovecot does, RFC 7162 §3.2).
        await s.refresh(allow_expunge=True)
        code = r.highestmodseq(sel.highestmodseq)
    return f"{'UID ' if cmd.uids is not None else ''}EXPUNGE completed", code


def _store_rights(cmd: c.Store, have: str) -> tuple[str, frozenset[str]]:
    """Rights STORE needs (RFC 4314 §4), and flags the person may not clear with a
    FLAGS replacement (kept as they are)."""
    needed = set()
    for f in cmd.flags:
        needed.add("s" if f == SEEN else "t" if f == DELETED else "w")
    keep: set[str] = set()
    if cmd.mode is c.StoreMode.REPLACE:
        if "s" not in have:
            keep.add(SEEN)
        if "t" not in have:
            keep.add(DELETED)
        if "w" not in have:
            needed.add("w")
    return "".join(sorted(needed)), frozenset(keep)


async def h_store(s: Session, cmd: c.Store) -> Result:
    sel = writable(s)
    have = rights(s, sel.target)
    needed, keep = _store_rights(cmd, have)
    what = "set \\Deleted" if "t" in needed else "change flags"
    need(s, sel.target, needed, what)
    uids = members(sel, cmd.sequence_set, cmd.uid)
    flags = frozenset(cmd.flags)
    if keep:
        flags = flags - keep
    event: AuditEvent | None = None
    if traced(s, sel.target.box) and uids:
        event = ImapFlagsChanged(
            **who(s, sel.target.box, f"{'UID ' if cmd.uid else ''}STORE ({sel.name})"),
            folder=sel.target.folder,
            uids=tuple(uids),
            mode=cmd.mode.value,
            flags=tuple(cmd.flags),
            answer="OK",
        )
    res = await s.service.mail.store_flags(
        sel.folder.id,
        uids,
        cmd.mode.value,
        flags,
        person=sel.seen_person,
        unchanged_since=cmd.unchanged_since,
        event=event,
        keep=keep,
    )
    if cmd.unchanged_since is not None:
        s.enable_condstore()  # RFC 7162 §3.1
    for f in res.changed:
        s.update_flags(f)
    condstore = "CONDSTORE" in s.enabled
    if not cmd.silent or condstore:
        modified = set(res.modified)
        for uid in uids:
            if uid in modified or uid not in sel.flags:
                continue
            f = sel.flags[uid]
            items = [] if cmd.silent else [b"FLAGS " + sel.flag_list(uid)]
            if cmd.uid or condstore:
                # RFC 7162 §3.2.4: once CONDSTORE is enabled, UID and MODSEQ in
                # every FETCH a flag change causes
                items.append(b"UID %d" % uid)
            if condstore:
                items.append(b"MODSEQ (%d)" % f.modseq)
            if cmd.silent and not condstore:
                continue
            s.emit(b"* %d FETCH " % sel.seq_of(uid) + r.paren(items) + b"\r\n")
    code: r.Code | None = None
    if res.modified:
        code = r.modified(
            sorted(res.modified) if cmd.uid else sorted(sel.seq_of(u) for u in res.modified)
        )
    return f"{'UID ' if cmd.uid else ''}STORE completed", code
