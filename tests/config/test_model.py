"""Rights of a person on a box, with co-holder validity windows (inclusive)."""

from __future__ import annotations

import datetime as dt

import pytest

from relay.config.model import ALL_RIGHTS, BoxType, Coholder, Mailbox, Right, SeenMode


def box(*coholders: Coholder, owner: str | None = "owner") -> Mailbox:
    return Mailbox(
        address="cab@example.fr",
        type=BoxType.CAB,
        owner=owner,
        structure_id=None,
        responsible=owner,
        liste_rouge=False,
        seen=SeenMode.SHARED,
        pharmacy=False,
        coholders=coholders,
    )


SUMMER = Coholder(
    "remp", frozenset({Right.READ, Right.SEND}), dt.date(2026, 7, 1), dt.date(2026, 8, 31)
)


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (dt.date(2026, 6, 30), frozenset()),
        (dt.date(2026, 7, 1), {Right.READ, Right.SEND}),
        (dt.date(2026, 8, 31), {Right.READ, Right.SEND}),
        (dt.date(2026, 9, 1), frozenset()),
    ],
)
def test_window_bounds_inclusive(day: dt.date, expected: frozenset[Right]) -> None:
    assert box(SUMMER).rights_of("remp", day) == expected


def test_open_ended_windows() -> None:
    since = Coholder("a", frozenset({Right.FLAG}), dt.date(2026, 1, 1), None)
    until = Coholder("b", frozenset({Right.FLAG}), None, dt.date(2026, 1, 1))
    b = box(since, until)
    assert b.rights_of("a", dt.date(2025, 12, 31)) == frozenset()
    assert b.rights_of("a", dt.date(2099, 1, 1)) == {Right.FLAG}
    assert b.rights_of("b", dt.date(2000, 1, 1)) == {Right.FLAG}
    assert b.rights_of("b", dt.date(2026, 1, 2)) == frozenset()


def test_owner_and_strangers() -> None:
    b = box(SUMMER)
    assert b.rights_of("owner", dt.date(2000, 1, 1)) == ALL_RIGHTS
    assert b.rights_of("stranger", dt.date(2026, 7, 15)) == frozenset()
    assert box(SUMMER, owner=None).rights_of("owner", dt.date(2026, 7, 15)) == frozenset()
