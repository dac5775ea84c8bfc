"""Parsing of SORT, THREAD, CANCELUPDATE and the RFC 5267 / RFC 5182 return options."""

from __future__ import annotations

import pytest

from relay.imap import commands as c
from relay.imap.parser import FailureKind, ParseFailure, parse_command

S = c.SortCriterion
K = c.SortKey
R = c.SearchReturn


def test_sort() -> None:
    cmd = parse_command(b"a UID SORT (REVERSE date Subject) UTF-8 SEEN 1:5")
    assert cmd == c.Sort(
        tag="a",
        uid=True,
        criteria=(S(K.DATE, reverse=True), S(K.SUBJECT)),
        charset="UTF-8",
        search=c.SearchAnd(
            (
                c.SearchFlag("\\Seen", True),
                c.SearchSequence(c.SequenceSet((c.SeqRange(1, 5),)), uid=False),
            )
        ),
    )


def test_esort_partial_is_normalised() -> None:
    cmd = parse_command(b"a SORT RETURN (PARTIAL 4:2 COUNT) (DISPLAYFROM) us-ascii ALL")
    assert isinstance(cmd, c.Sort)
    assert cmd.return_options == frozenset({R.PARTIAL, R.COUNT}) and cmd.partial == (2, 4)


def test_thread() -> None:
    assert parse_command(b"t UID THREAD references US-ASCII ALL") == c.Thread(
        tag="t",
        uid=True,
        algorithm=c.ThreadAlgorithm.REFERENCES,
        charset="US-ASCII",
        search=c.SearchAll(),
    )


def test_search_update_and_saved_set() -> None:
    cmd = parse_command(b"s SEARCH RETURN (UPDATE CONTEXT SAVE) $ UNSEEN")
    assert isinstance(cmd, c.Search)
    assert cmd.return_options == frozenset({R.UPDATE, R.CONTEXT, R.SAVE})
    assert isinstance(cmd.criteria, c.SearchAnd)
    first = cmd.criteria.keys[0]
    assert isinstance(first, c.SearchSequence) and first.sequence_set.saved


def test_cancelupdate() -> None:
    assert parse_command(b'x CANCELUPDATE "a1" "b2"') == c.CancelUpdate(tag="x", tags=("a1", "b2"))


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"a SEARCH RETURN (PARTIAL 1) ALL", FailureKind.SYNTAX),
        (b"a SEARCH RETURN (PARTIAL 1:*) ALL", FailureKind.SYNTAX),
        (b"a SEARCH RETURN (PARTIAL *:1) ALL", FailureKind.SYNTAX),
        (b"a SEARCH RETURN (PARTIAL 0:3) ALL", FailureKind.SYNTAX),
        (b"a SORT (ARRIVAL) ALL", FailureKind.BAD_CHARSET),  # the charset is required
        (b"a SORT () UTF-8 ALL", FailureKind.SYNTAX),
        (b"a SORT (REVERSE) UTF-8 ALL", FailureKind.SYNTAX),
        (b"a SORT (COLOUR) UTF-8 ALL", FailureKind.SYNTAX),
        (b"a SORT (DATE) KOI8-R ALL", FailureKind.BAD_CHARSET),
        (b"a SORT (DATE) UTF-8", FailureKind.SYNTAX),
        (b"a THREAD LINKS UTF-8 ALL", FailureKind.SYNTAX),
        (b"a THREAD REFERENCES UTF-8", FailureKind.SYNTAX),
        (b"a CANCELUPDATE", FailureKind.SYNTAX),
    ],
)
def test_refused(line: bytes, kind: FailureKind) -> None:
    out = parse_command(line)
    assert isinstance(out, ParseFailure) and out.kind is kind and out.tag == "a"


def test_notify_set() -> None:
    cmd = parse_command(
        b"n NOTIFY SET STATUS (SELECTED (MessageNew (UID FLAGS) messageexpunge)) "
        b"(SUBTREE (INBOX Partages) (FlagChange Bogus)) (MAILBOXES x NONE)"
    )
    assert isinstance(cmd, c.Notify) and cmd.status and cmd.groups is not None
    sel, sub, none = cmd.groups
    assert sel.filter is c.NotifyFilter.SELECTED
    assert sel.events == {c.NotifyEvent.MESSAGE_NEW, c.NotifyEvent.MESSAGE_EXPUNGE}
    assert [a.item for a in sel.fetch] == [c.FetchItem.UID, c.FetchItem.FLAGS]
    assert sub.mailboxes == ("INBOX", "Partages") and sub.unknown == ("Bogus",)
    assert none.mailboxes == ("x",) and none.events == frozenset()


@pytest.mark.parametrize(
    "line",
    [b"n NOTIFY", b"n NOTIFY SET", b"n NOTIFY SET (ELSEWHERE (MessageNew))", b"n NOTIFY ALL"],
)
def test_notify_refused(line: bytes) -> None:
    out = parse_command(line)
    assert isinstance(out, ParseFailure) and out.kind is FailureKind.SYNTAX
