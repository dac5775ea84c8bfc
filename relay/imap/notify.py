"""NOTIFY (RFC 5465): which events a session asked for on which mailboxes, pure.

`NotifySpec.events_for` answers, for a mailbox other than the selected one, which
events the client wants (the first event group whose filter covers it, RFC 5465 §6);
`status_items` gives the STATUS data that reports those events (§5.1-§5.3: MESSAGES
and UIDNEXT for new messages, MESSAGES for expunges, HIGHESTMODSEQ for flag changes).
Whether the person may read a mailbox is not decided here: the session asks with the
rights of the moment, so a mailbox the person lost access to is never reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from relay.imap import commands as c

E = c.NotifyEvent
F = c.NotifyFilter

# Events this server reports (RFC 5465 §5); the others get NO [BADEVENT (...)].
SUPPORTED: frozenset[c.NotifyEvent] = frozenset({E.MESSAGE_NEW, E.MESSAGE_EXPUNGE, E.FLAG_CHANGE})


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A mailbox as the filters see it: its name for this session and what it is."""

    name: str
    inbox: bool  # an INBOX: the person's own or a shared box's (RFC 5465 §6 INBOXES)
    personal: bool  # in the personal namespace
    subscribed: bool


def _covers(group: c.NotifyGroup, box: Mailbox) -> bool:
    if group.filter is F.INBOXES:
        return box.inbox
    if group.filter is F.PERSONAL:
        return box.personal
    if group.filter is F.SUBSCRIBED:
        return box.subscribed
    if group.filter is F.MAILBOXES:
        return box.name in group.mailboxes
    if group.filter is F.SUBTREE:
        return any(box.name == m or box.name.startswith(m + "/") for m in group.mailboxes)
    return False  # SELECTED, SELECTED-DELAYED: only the selected mailbox


@dataclass(frozen=True, slots=True)
class NotifySpec:
    """A session's NOTIFY SET."""

    groups: tuple[c.NotifyGroup, ...]

    @property
    def selected(self) -> c.NotifyGroup | None:
        """The group for the selected mailbox (SELECTED or SELECTED-DELAYED), if any."""
        return next((g for g in self.groups if g.filter in (F.SELECTED, F.SELECTED_DELAYED)), None)

    def events_for(self, box: Mailbox) -> frozenset[c.NotifyEvent]:
        """What to report about a mailbox that is not the selected one."""
        for group in self.groups:
            if _covers(group, box):
                return group.events
        return frozenset()

    @property
    def watches_others(self) -> bool:
        return any(
            g.events and g.filter not in (F.SELECTED, F.SELECTED_DELAYED) for g in self.groups
        )


@dataclass(frozen=True, slots=True)
class Watched:
    """A folder other than the selected one that a session reports on."""

    box: str
    folder: str
    name: str  # as this session names it
    events: frozenset[c.NotifyEvent]


def unsupported(groups: Iterable[c.NotifyGroup]) -> list[str]:
    """Event names asked for that this server does not report (for BADEVENT)."""
    out: list[str] = []
    for g in groups:
        out += [e.value for e in g.events if e not in SUPPORTED]
        out += list(g.unknown)
    return out


def status_items(events: frozenset[c.NotifyEvent]) -> tuple[c.StatusAttr, ...]:
    """The STATUS items that report `events` (RFC 5465 §5.1-§5.3)."""
    want: set[c.StatusAttr] = set()
    if E.MESSAGE_NEW in events:
        want |= {c.StatusAttr.MESSAGES, c.StatusAttr.UIDNEXT, c.StatusAttr.UIDVALIDITY}
    if E.MESSAGE_EXPUNGE in events:
        want.add(c.StatusAttr.MESSAGES)
    if E.FLAG_CHANGE in events:
        want |= {c.StatusAttr.UIDVALIDITY, c.StatusAttr.HIGHESTMODSEQ}
    order = (
        c.StatusAttr.MESSAGES,
        c.StatusAttr.UIDNEXT,
        c.StatusAttr.UIDVALIDITY,
        c.StatusAttr.HIGHESTMODSEQ,
    )
    return tuple(a for a in order if a in want)
