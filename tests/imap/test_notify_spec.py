"""Which mailboxes a NOTIFY SET covers and what STATUS reports it (RFC 5465 §5, §6)."""

from __future__ import annotations

import pytest

from relay.imap import commands as c
from relay.imap.notify import Mailbox, NotifySpec, status_items, unsupported

E = c.NotifyEvent
F = c.NotifyFilter
NEW = frozenset({E.MESSAGE_NEW, E.MESSAGE_EXPUNGE})
FLAGS = frozenset({E.FLAG_CHANGE})

SPEC = NotifySpec(
    (
        c.NotifyGroup(F.SELECTED, events=NEW),
        c.NotifyGroup(F.MAILBOXES, ("Archives",), frozenset()),  # NONE for this one
        c.NotifyGroup(F.SUBTREE, ("Partages/s@x.fr",), FLAGS),
        c.NotifyGroup(F.INBOXES, events=NEW),
        c.NotifyGroup(F.PERSONAL, events=FLAGS | NEW),
    )
)


def mb(name: str, *, inbox: bool = False, personal: bool = False) -> Mailbox:
    return Mailbox(name, inbox=inbox, personal=personal, subscribed=False)


@pytest.mark.parametrize(
    ("box", "events"),
    [
        (mb("Archives", personal=True), frozenset()),  # the first group that covers it
        (mb("Partages/s@x.fr/INBOX", inbox=True), FLAGS),
        (mb("Partages/s@x.fr2/INBOX", inbox=True), NEW),  # not under the subtree
        (mb("INBOX", inbox=True, personal=True), NEW),
        (mb("Sent", personal=True), FLAGS | NEW),
        (mb("Partages/t@x.fr/Sent"), frozenset()),
    ],
)
def test_events_for(box: Mailbox, events: frozenset[c.NotifyEvent]) -> None:
    assert SPEC.events_for(box) == events


def test_selected_group() -> None:
    assert SPEC.selected is not None and SPEC.selected.events == NEW
    assert NotifySpec((c.NotifyGroup(F.PERSONAL, events=NEW),)).selected is None


@pytest.mark.parametrize(
    ("events", "items"),
    [
        (frozenset({E.MESSAGE_EXPUNGE}), ("MESSAGES",)),
        (frozenset({E.MESSAGE_NEW}), ("MESSAGES", "UIDNEXT", "UIDVALIDITY")),
        (FLAGS, ("UIDVALIDITY", "HIGHESTMODSEQ")),
        (NEW | FLAGS, ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "HIGHESTMODSEQ")),
    ],
)
def test_status_items(events: frozenset[c.NotifyEvent], items: tuple[str, ...]) -> None:
    assert tuple(a.value for a in status_items(events)) == items


def test_unsupported() -> None:
    groups = (
        c.NotifyGroup(F.PERSONAL, events=frozenset({E.MAILBOX_NAME, E.MESSAGE_NEW})),
        c.NotifyGroup(F.INBOXES, unknown=("Bogus",)),
    )
    assert unsupported(groups) == ["MailboxName", "Bogus"]
    assert unsupported((c.NotifyGroup(F.SELECTED, events=NEW),)) == []
