"""NOTIFY (RFC 5465): tell a client of new messages, expunges and flag changes in the
mailboxes it names, as they happen, without IDLE and without polling.

Only mailboxes in the person's view are ever watched (their own box and the shared
boxes they co-hold, with the RFC 4314 ``l`` and ``r`` rights of the moment), and the
right to read is checked again before each report: a box the person lost access to
(config reload) is dropped and never reported again. Other mailboxes get ``STATUS``
responses (§5.1-§5.3); the selected one, when a SELECTED or SELECTED-DELAYED group
asks for it, gets EXISTS / EXPUNGE / FETCH at once, with MessageNew's fetch
attributes for each new message (§5.1). Supported events: MessageNew,
MessageExpunge, FlagChange; the others are refused with ``NO [BADEVENT (...)]``
(§3.1), as are MailboxName and SubscriptionChange, not implemented yet.
"""

from __future__ import annotations

from relay.imap import commands as c
from relay.imap import names
from relay.imap import response as r
from relay.imap.handlers.common import ImapError, Result, rights, seen_person, view
from relay.imap.handlers.fetch import h_fetch
from relay.imap.names import Target
from relay.imap.notify import SUPPORTED, Mailbox, NotifySpec, Watched, status_items, unsupported
from relay.imap.session import Session

_VALUES = {
    c.StatusAttr.MESSAGES: "messages",
    c.StatusAttr.UIDNEXT: "uidnext",
    c.StatusAttr.UIDVALIDITY: "uidvalidity",
    c.StatusAttr.HIGHESTMODSEQ: "highestmodseq",
}


class BadEvent(ImapError):
    """RFC 5465 §3.1: an event this server does not report; the code lists those it does."""

    imap_code = "BADEVENT"

    def __init__(self) -> None:
        super().__init__("Some of these events are not supported")
        self.imap_argument = "(" + " ".join(sorted(e.value for e in SUPPORTED)) + ")"


async def _watched(s: Session, spec: NotifySpec) -> dict[int, Watched]:
    """The folders of the person's view that the spec asks about, with the events."""
    assert s.principal is not None
    v = view(s)
    subscribed = await s.service.mail.subscriptions(s.principal.person_id)
    out: dict[int, Watched] = {}
    for f in await s.service.mail.folders(v.boxes()):
        target = Target(f.box, f.name)
        have = rights(s, target)
        if "l" not in have or "r" not in have:
            continue
        name = names.display(target, v)
        box = Mailbox(
            name=name,
            inbox=f.name == "INBOX",
            personal=f.box == v.personal,
            subscribed=(f.box, f.name) in subscribed,
        )
        events = spec.events_for(box)
        if events:
            out[f.id] = Watched(f.box, f.name, name, events)
    return out


async def h_notify(s: Session, cmd: c.Notify) -> Result:
    if cmd.groups is None:
        s.set_notify(None, {})
        return "NOTIFY completed", None
    if unsupported(cmd.groups):
        raise BadEvent
    spec = NotifySpec(cmd.groups)
    watch = await _watched(s, spec)
    s.set_notify(spec, watch)
    s.notify_sent.clear()
    if cmd.status:
        # RFC 5465 §3: STATUS for every watched mailbox now (not the selected one).
        for fid, w in watch.items():
            if s.selected is None or s.selected.folder.id != fid:
                await _report(s, fid, w, force=True)
    return "NOTIFY completed", None


async def _report(s: Session, fid: int, w: Watched, *, force: bool = False) -> None:
    target = Target(w.box, w.folder)
    if "r" not in rights(s, target):
        s.unwatch_one(fid)  # access withdrawn: never reported again
        return
    st = await s.service.status(fid, seen_person(s, w.box))
    items = status_items(w.events)
    values = tuple((a, getattr(st, _VALUES[a])) for a in items)
    if not force and s.notify_sent.get(fid) == values:
        return  # nothing the client asked about changed
    s.notify_sent[fid] = values
    data = " ".join(f"{a.value} {n}" for a, n in values)
    s.emit(r.untagged(b"STATUS " + s.mailbox(w.name) + b" (" + data.encode() + b")"))


async def deliver_others(s: Session) -> None:
    """STATUS for the other watched folders that changed since the last report."""
    pending, s.notify_pending = s.notify_pending, set()
    for fid in sorted(pending):
        w = s.notify_watch.get(fid)
        if w is None or (s.selected is not None and s.selected.folder.id == fid):
            continue
        await _report(s, fid, w)


async def deliver(s: Session) -> None:
    """Between commands: the other folders' news, and the selected folder's when a
    SELECTED group asks for it (SELECTED-DELAYED holds expunges back, §6)."""
    await deliver_others(s)
    spec = s.notify_spec
    group = spec.selected if spec is not None else None
    sel = s.selected
    if group is None or not group.events or sel is None or not sel.dirty:
        return
    before = sel.largest_uid
    await s.refresh(allow_expunge=group.filter is c.NotifyFilter.SELECTED)
    new = [u for u in sel.uids if u > before]
    if new and group.fetch and c.NotifyEvent.MESSAGE_NEW in group.events:
        ranges = tuple(c.SeqRange(u, u) for u in new)
        fetch = c.Fetch(
            tag="*", uid=True, sequence_set=c.SequenceSet(ranges), attributes=group.fetch
        )
        await h_fetch(s, fetch)
