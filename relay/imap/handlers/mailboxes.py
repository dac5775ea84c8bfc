"""Folder commands (RFC 3501 §6.3): SELECT/EXAMINE, CREATE, DELETE, RENAME,
SUBSCRIBE/UNSUBSCRIBE, LIST/LSUB (LIST-EXTENDED RFC 5258, LIST-STATUS RFC 5819),
STATUS.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass

from relay.audit.events import ImapFolderChanged, ImapSelected
from relay.imap import commands as c
from relay.imap import listing, names, rev2
from relay.imap import response as r
from relay.imap.flags import MailboxFlags, permanent_system_flags
from relay.imap.handlers.common import (
    AlreadyExists,
    Cannot,
    ClientBug,
    NoSuchMailbox,
    Result,
    check_new_folder_name,
    existing,
    mailbox_name,
    need,
    record,
    rights,
    seen_person,
    target_of,
    traced,
    view,
    who,
)
from relay.imap.names import Target
from relay.imap.session import Selected, Session
from relay.imap.state import Event
from relay.store.mailstore import SEEN, FolderExists, FolderMissing


async def select_folder(s: Session, cmd: c.Select | c.Examine) -> Result:
    assert s.principal is not None
    read_only = isinstance(cmd, c.Examine)
    if cmd.qresync is not None and "QRESYNC" not in s.enabled:
        raise ClientBug("ENABLE QRESYNC first (RFC 7162 §3.2.5)")
    if s.selected is not None and ("QRESYNC" in s.enabled or s.rev2):
        # RFC 7162 §3.2.11, RFC 9051 §6.3.2: the client learns where the old mailbox's
        # responses end.
        s.emit(r.untagged_status(r.Status.OK, "Previous mailbox closed", r.ResponseCode.CLOSED))
    s.deselect(Event.SELECT_FAILED)  # RFC 3501 §6.3.1: a failed SELECT leaves none
    target = target_of(s, cmd.mailbox)
    need(s, target, "r", "read messages")
    person = seen_person(s, target.box)
    try:
        index, uids, flags, buckets = await s.service.snapshot(target.box, target.folder, person)
    except FolderMissing:
        raise NoSuchMailbox("No such mailbox") from None
    # The folder as the snapshot saw it, before anything below awaits: the index may
    # move on meanwhile, and a UIDNEXT newer than `uids` would claim \Recent for
    # messages this session does not list (so no session would show them as recent).
    folder = index.folder
    have = rights(s, target)
    if not any(ch in have for ch in "swte"):
        read_only = True  # RFC 4314 §4: nothing it could change
    if traced(s, target.box):
        await record(
            s,
            ImapSelected(
                **who(s, target.box, f"{cmd.name} {names.display(target, view(s))}"),
                folder=target.folder,
                read_only=read_only,
                messages=len(uids),
                answer="OK",
            ),
        )
    if read_only:
        first_recent = folder.recent_uid  # EXAMINE shows \Recent without taking it
    else:
        first_recent = await s.service.claim_recent(folder.id, folder.uidnext, folder.recent_uid)
    # FLAGS lists the keywords in use, so none reaches the client unannounced.
    mailbox_flags = MailboxFlags(
        permanent=() if read_only else permanent_system_flags(have),
        new_keywords=not read_only and "w" in have,
    )
    mailbox_flags.learn(index.keywords)
    sel = Selected(
        target=target,
        name=names.display(target, view(s)),
        folder=folder,
        read_only=read_only,
        seen_person=person,
        uids=uids,
        flags=flags,
        highestmodseq=folder.highestmodseq,
        mailbox_flags=mailbox_flags,
        recent=set(uids[bisect.bisect_left(uids, first_recent) :]),
        show_recent=not s.rev2,
        by_flags=buckets,
    )
    s.select(sel)
    if cmd.condstore:
        s.enabled.add("CONDSTORE")
    flags_line, permanent_line = mailbox_flags.responses()
    s.emit(flags_line)
    s.emit(r.untagged(b"%d EXISTS" % len(sel.uids)))
    if s.rev2:
        # RFC 9051 §6.3.2: the mailbox's LIST (accurate attributes), and no RECENT.
        await _emit_own_list(s, sel.name)
    else:
        s.emit(r.untagged(b"%d RECENT" % len(sel.recent)))
    first_unseen = next(
        (i + 1 for i, u in enumerate(sel.uids) if SEEN not in sel.flags[u].flags), 0
    )
    if first_unseen:
        s.emit(r.untagged_status(r.Status.OK, "First unseen", r.unseen(first_unseen)))
    s.emit(r.untagged_status(r.Status.OK, "UIDs valid", r.uidvalidity(folder.uidvalidity)))
    s.emit(r.untagged_status(r.Status.OK, "Predicted next UID", r.uidnext(folder.uidnext)))
    s.emit(permanent_line)
    s.emit(r.untagged_status(r.Status.OK, "Highest", r.highestmodseq(folder.highestmodseq)))
    if cmd.qresync is not None and cmd.qresync.uidvalidity == folder.uidvalidity:
        await _resynchronise(s, sel, cmd.qresync)
    code = r.ResponseCode.READ_ONLY if read_only else r.ResponseCode.READ_WRITE
    return f"{cmd.name} completed", code


async def _emit_own_list(s: Session, name: str) -> None:
    """``* LIST (attributes) "/" name`` for the mailbox just selected, with the
    attributes a LIST of it gives (RFC 9051 §6.3.2)."""
    visible = await _visible(s)
    exact = re.compile(re.escape(name))
    for item in listing.list_mailboxes([m for m, _ in visible.values()], {}, [exact]):
        s.emit(r.untagged(b"LIST " + r.flag_list(item.attributes) + b' "/" ' + s.mailbox(name)))


async def _resynchronise(s: Session, sel: Selected, q: c.Qresync) -> None:
    """RFC 7162 §3.2.5: what changed since the client's MODSEQ, within the UIDs it
    knows: ``VANISHED (EARLIER)`` for the removed, then a FETCH (UID, FLAGS, MODSEQ)
    for each message changed or added. With a different UIDVALIDITY nothing is sent
    (the client starts over). The removal history is complete (`MailStore.vanished`),
    so the optional sequence-match samples are not needed to narrow it."""
    gone = await s.service.mail.vanished(sel.folder.id, q.modseq)
    if q.known_uids is not None:
        top = max(sel.largest_uid, gone[-1] if gone else 0)
        gone = [u for u in gone if q.known_uids.contains(u, top)]
    if gone:
        s.emit(r.untagged("VANISHED (EARLIER) " + r.sequence_set(gone)))
    for uid in sel.uids:
        f = sel.flags[uid]
        if f.modseq <= q.modseq:
            continue
        if q.known_uids is not None and not q.known_uids.contains(uid, sel.largest_uid):
            continue
        s.emit(
            b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n"
            % (sel.seq_of(uid), uid, sel.flag_list(uid), f.modseq)
        )


async def h_select(s: Session, cmd: c.Select | c.Examine) -> Result:
    return await select_folder(s, cmd)


def _new_folder_name(s: Session, raw: str) -> Target:
    name = mailbox_name(raw).rstrip("/")
    target = names.resolve(name, view(s))
    if target is None or not target.folder or "//" in name:
        raise Cannot("Folders can only be created inside a box you hold")
    check_new_folder_name(s, target)
    return target


async def h_create(s: Session, cmd: c.Create) -> Result:
    target = _new_folder_name(s, cmd.mailbox)
    need(s, target, "k", "create folders")
    special = cmd.special_use[0] if cmd.special_use else None
    try:
        await s.service.mail.create_folder(
            target.box,
            target.folder,
            special,
            ImapFolderChanged(
                **who(s, target.box, f"CREATE {cmd.mailbox}"),
                operation="create",
                folder=target.folder,
            ),
        )
    except FolderExists:
        raise AlreadyExists("Mailbox already exists") from None
    return "CREATE completed", None


async def h_delete(s: Session, cmd: c.Delete) -> Result:
    target = await existing(s, cmd.mailbox)
    need(s, target, "x", "delete folders")
    if target.folder == "INBOX":
        raise Cannot("INBOX cannot be deleted")
    # RFC 3501 §6.3.4: the folders inside stay (they MUST NOT be removed); the name
    # then lists as a \Noselect parent. Only a name that is not a folder (such a
    # parent, a hierarchy node) cannot be deleted: `existing` answered NONEXISTENT.
    if s.selected is not None and s.selected.target == target:
        s.deselect()
    await s.service.mail.delete_folder(
        target.box,
        target.folder,
        ImapFolderChanged(
            **who(s, target.box, f"DELETE {cmd.mailbox}"), operation="delete", folder=target.folder
        ),
    )
    return "DELETE completed", None


async def h_rename(s: Session, cmd: c.Rename) -> Result:
    source = await existing(s, cmd.source)
    dest = _new_folder_name(s, cmd.destination)
    if dest.box != source.box:
        raise Cannot("Folders can only be renamed within the same box")
    if source.folder == "INBOX":
        raise Cannot("INBOX cannot be renamed")
    if dest.folder.startswith(source.folder + names.DELIMITER):
        raise Cannot("A folder cannot be moved inside itself")
    need(s, source, "x", "rename folders")
    need(s, dest, "k", "create folders")
    try:
        await s.service.mail.rename_folder(
            source.box,
            source.folder,
            dest.folder,
            ImapFolderChanged(
                **who(s, source.box, f"RENAME {cmd.source} {cmd.destination}"),
                operation="rename",
                folder=source.folder,
                new_name=dest.folder,
            ),
        )
    except FolderExists:
        raise AlreadyExists("Mailbox already exists") from None
    return "RENAME completed", None


async def h_subscribe(s: Session, cmd: c.Subscribe | c.Unsubscribe) -> Result:
    assert s.principal is not None
    target = target_of(s, cmd.mailbox)
    await s.service.mail.subscribe(
        s.principal.person_id, target.box, target.folder, isinstance(cmd, c.Subscribe)
    )
    return f"{cmd.name} completed", None


async def _visible(s: Session) -> dict[str, tuple[listing.Mailbox, Target | None]]:
    """Every name the person can LIST, with its folder (None for a hierarchy node)."""
    v = view(s)
    out: dict[str, tuple[listing.Mailbox, Target | None]] = {}
    for f in await s.service.mail.folders(list(v.boxes())):
        t = Target(f.box, f.name)
        if "l" in rights(s, t):
            name = names.display(t, v)
            out[name] = (listing.Mailbox(name, special_use=f.special_use), t)
    for node in names.hierarchy_nodes(v):
        out[node] = (listing.Mailbox(node, listing.Kind.NODE), None)
    return out


async def _subscribed(s: Session) -> dict[str, Target]:
    """The person's subscriptions in the boxes they see now, by display name (they may
    name folders that no longer exist: RFC 3501 §6.3.6 keeps them)."""
    assert s.principal is not None
    v = view(s)
    boxes = set(v.boxes())
    out: dict[str, Target] = {}
    for box, folder in await s.service.mail.subscriptions(s.principal.person_id):
        if box in boxes:
            t = Target(box, folder)
            out[names.display(t, v)] = t
    return out


@dataclass(frozen=True, slots=True)
class _Utf8Pattern:
    """A LIST pattern matched against names as UTF-8 (an IMAP4rev2 session, RFC 9051
    §5.1): ``*é`` must match ``éé``, whose stored form is one modified UTF-7 run."""

    regex: re.Pattern[str]

    def fullmatch(self, name: str, /) -> object:
        return self.regex.fullmatch(rev2.wire_name(name))


def _pattern(s: Session, reference: str, pattern: str) -> listing.Matcher:
    if s.rev2:
        # The names came in as UTF-8 and were stored-form'd on the way in: undo it.
        return _Utf8Pattern(names.pattern(rev2.wire_name(reference), rev2.wire_name(pattern)))
    return names.pattern(reference, pattern)


async def h_list(s: Session, cmd: c.List | c.Lsub) -> Result:
    if isinstance(cmd, c.List):
        check_status_items(s, cmd.return_status)
    if isinstance(cmd, c.List) and len(cmd.patterns) == 1 and cmd.patterns[0] == "":
        # RFC 3501 §6.3.8: the delimiter and the root of the reference.
        s.emit(r.untagged(b'LIST (\\Noselect) "/" ""'))
        return "LIST completed", None
    visible = await _visible(s)
    boxes = [m for m, _ in visible.values()]
    if isinstance(cmd, c.Lsub):
        subscribed = await _subscribed(s)
        answer = listing.lsub(boxes, subscribed, _pattern(s, cmd.reference, cmd.pattern))
        verb = b"LSUB"
    else:
        subscribed = {}
        if (
            c.ListSelect.SUBSCRIBED in cmd.selection
            or c.ListReturn.SUBSCRIBED in cmd.return_options
        ):
            subscribed = await _subscribed(s)
        regexes = [_pattern(s, cmd.reference, p) for p in cmd.patterns]
        answer = listing.list_mailboxes(
            boxes, subscribed, regexes, cmd.selection, cmd.return_options
        )
        verb = b"LIST"
    for item in answer:
        line = verb + b" " + r.flag_list(item.attributes) + b' "/" ' + s.mailbox(item.name)
        if item.childinfo:
            line += b' ("CHILDINFO" ("SUBSCRIBED"))'  # RFC 5258 §3.5
        s.emit(r.untagged(line))
        target = visible[item.name][1] if item.selectable else None
        if (
            isinstance(cmd, c.List)
            and cmd.return_status is not None
            and target is not None
            and "r" in rights(s, target)
        ):
            await emit_status(s, item.name, target, cmd.return_status)
    return f"{verb.decode()} completed", None


async def emit_status(s: Session, name: str, target: Target, attrs: Iterable[c.StatusAttr]) -> None:
    index = await s.runtime.indexes.find(target.box, target.folder)
    if index is None:
        raise NoSuchMailbox("No such mailbox")
    st = index.status(seen_person(s, target.box))
    values = {
        c.StatusAttr.MESSAGES: st.messages,
        c.StatusAttr.RECENT: st.recent,
        c.StatusAttr.UIDNEXT: st.uidnext,
        c.StatusAttr.UIDVALIDITY: st.uidvalidity,
        c.StatusAttr.UNSEEN: st.unseen,
        c.StatusAttr.HIGHESTMODSEQ: st.highestmodseq,
        c.StatusAttr.SIZE: st.size,
        c.StatusAttr.DELETED: st.deleted,
    }
    items = " ".join(f"{a.value} {values[a]}" for a in attrs)
    s.emit(r.untagged(b"STATUS " + s.mailbox(name) + b" (" + items.encode() + b")"))


def check_status_items(s: Session, attrs: Iterable[c.StatusAttr] | None) -> None:
    """RFC 9051 §9 ``status-att`` has no RECENT: an IMAP4rev2 session asking for it
    is told so (BAD) rather than given a count of a flag it never sees."""
    if s.rev2 and attrs is not None and c.StatusAttr.RECENT in attrs:
        raise ClientBug("STATUS RECENT is not part of IMAP4rev2 (RFC 9051 Appendix E)")


async def h_status(s: Session, cmd: c.Status) -> Result:
    check_status_items(s, cmd.attributes)
    target = await existing(s, cmd.mailbox)
    need(s, target, "r", "read messages")
    await emit_status(s, names.display(target, view(s)), target, cmd.attributes)
    return "STATUS completed", None
