"""LIST / LSUB answers (RFC 3501 §6.3.8-9, LIST-EXTENDED RFC 5258), pure."""

from __future__ import annotations

import pytest

from relay.imap import commands as c
from relay.imap.listing import Kind, Listed, Mailbox, list_mailboxes, lsub
from relay.imap.names import pattern

S = c.ListSelect
R = c.ListReturn

# The tree imaptest's listext script builds (test6 deleted after being subscribed).
TREE = [
    Mailbox(n)
    for n in (
        "INBOX",
        "t",
        "t/test1",
        "t/test2",
        "t/test2/test1",
        "t/test3",
        "t/test4/test5",  # t/test4 was never created: an implied parent
        "t/test4/test52",
        "t/test7/test7",
        "t/test8",
        "t/test8/test8",
        "t/test8/test9",
    )
] + [Mailbox("Sent", special_use="\\Sent"), Mailbox("Partages", Kind.NODE)]
SUBSCRIBED = {"t/test1", "t/test2/test1", "t/test6", "t/test7/test7", "t/test8/test8",
              "t/test8/test9"}  # fmt: skip


def run(
    patterns: tuple[str, ...],
    selection: frozenset[c.ListSelect] = frozenset(),
    returns: frozenset[c.ListReturn] = frozenset(),
) -> dict[str, tuple[tuple[str, ...], bool]]:
    answer = list_mailboxes(
        TREE, SUBSCRIBED, [pattern("", p) for p in patterns], selection, returns
    )
    return {x.name: (x.attributes, x.childinfo) for x in answer}


def test_plain_list_shows_implied_parents_as_noselect_and_children() -> None:
    got = run(("t/%",))
    assert list(got) == ["t/test1", "t/test2", "t/test3", "t/test4", "t/test7", "t/test8"]
    assert got["t/test4"] == (("\\Noselect", "\\HasChildren"), False)
    assert got["t/test2"] == (("\\HasChildren",), False)
    assert got["t/test1"] == (("\\HasNoChildren",), False)


def test_several_patterns() -> None:
    assert list(run(("t/*2", "t/test3"))) == ["t/test2", "t/test3", "t/test4/test52"]


def test_subscribed_selection_lists_deleted_names_as_nonexistent() -> None:
    got = run(("t/*",), frozenset({S.SUBSCRIBED}))
    assert list(got) == sorted(SUBSCRIBED)
    assert got["t/test6"] == (("\\NonExistent", "\\Subscribed"), False)
    assert got["t/test1"] == (("\\HasNoChildren", "\\Subscribed"), False)


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        # a subscribed child that the pattern misses: CHILDINFO on the parent that matches
        (("t/test2%",), {"t/test2": (("\\HasChildren",), True)}),
        (("t/test2",), {"t/test2": (("\\HasChildren",), True)}),
        # the child matches itself: it is listed, the parent is not reported for it
        (
            ("t/test2", "t/test2/test1"),
            {"t/test2/test1": (("\\HasNoChildren", "\\Subscribed"), False)},
        ),
        (("t*test7",), {"t/test7/test7": (("\\HasNoChildren", "\\Subscribed"), False)}),
        # test8/test9 misses the pattern (its parent gets CHILDINFO), test8/test8 matches
        (
            ("t*test8",),
            {
                "t/test8": (("\\HasChildren",), True),
                "t/test8/test8": (("\\HasNoChildren", "\\Subscribed"), False),
            },
        ),
    ],
)
def test_recursivematch_childinfo(
    patterns: tuple[str, ...], expected: dict[str, tuple[tuple[str, ...], bool]]
) -> None:
    assert run(patterns, frozenset({S.SUBSCRIBED, S.RECURSIVEMATCH})) == expected


def test_return_children_subscribed() -> None:
    got = run(("t/%",), returns=frozenset({R.CHILDREN, R.SUBSCRIBED}))
    assert got["t/test1"][0] == ("\\HasNoChildren", "\\Subscribed")
    assert got["t/test2"][0] == ("\\HasChildren",)
    assert got["t/test4"][0] == ("\\Noselect", "\\HasChildren")


def test_special_use_selection_and_nodes() -> None:
    assert run(("*",), frozenset({S.SPECIAL_USE})) == {
        "Sent": (("\\HasNoChildren", "\\Sent"), False)
    }
    assert run(("%",))["Partages"] == (("\\Noselect", "\\HasNoChildren"), False)
    assert next(iter(run(("*",)))) == "INBOX"  # INBOX first


def _lsub(pat: str, subscribed: set[str]) -> list[Listed]:
    return lsub(TREE, subscribed, pattern("", pat))


def test_lsub_reports_an_unsubscribed_parent_that_percent_stops_at_as_noselect() -> None:
    # imaptest "subscribe": test, test2/test and test3/test3 subscribed
    tree_subs = {"t/test1", "t/test2/test1", "t/test7/test7"}
    got = {x.name: x.attributes for x in _lsub("t/%", tree_subs)}
    assert got == {"t/test1": (), "t/test2": ("\\Noselect",), "t/test7": ("\\Noselect",)}
    got = {x.name: x.attributes for x in _lsub("*test1", tree_subs)}
    assert got == {"t/test1": (), "t/test2/test1": ()}
    # a subscribed parent is listed for itself, not as \Noselect
    got = {x.name: x.attributes for x in _lsub("t/%", {"t/test2", "t/test2/test1"})}
    assert got == {"t/test2": ()}
    # a subscription whose mailbox is gone is still listed
    assert [(x.name, x.attributes) for x in _lsub("t/test6", {"t/test6"})] == [
        ("t/test6", ("\\Noselect",))
    ]
