"""The pure cores of SORT and THREAD (RFC 5256, RFC 5957) and of search contexts
(RFC 5267, RFC 5182): table-driven."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from relay.imap import commands as c
from relay.imap import context as ctx
from relay.imap.sort import KeyCache, MessageKeys, base_subject, keys_of, sent_date, sort_messages
from relay.imap.thread import ordered_subject, references, render
from relay.message.analysis import Envelope, analyse

UTC = dt.UTC


@pytest.mark.parametrize(
    ("subject", "base", "reply"),
    [
        ("a", "a", False),
        ("Re: a", "a", True),
        ("RE: Re: re:a", "a", True),
        ("Fwd: a", "a", True),
        ("fw: a", "a", True),
        ("a (fwd)", "a", True),
        ("a (fwd)  (FWD) ", "a", True),
        ("[foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)", "b", True),
        ("Re: [FWD: c]", "c", True),
        ("[xyz]", "[xyz]", False),  # a blob alone stays: removing it would leave nothing
        ("[xyz] hello", "hello", False),
        ("re: [fwd: [fwd: re: [fwd: babylon]]]", "babylon", True),
        ("Ad: Re: Ad: Re: Ad: x", "Ad: Re: Ad: Re: Ad: x", False),  # "Ad:" is not Re
        ("=?iso-8859-1?q?RE:_C?=", "C", True),  # decoded first (step 1)
        ("=?us-ascii?b?UmU6IGM=?=", "c", True),
        ("=?iso-8859-1?q?_?=", "", False),
        ("  spaced \t  out  ", "spaced out", False),
        ("Re [x]: y", "y", True),
        ("", "", False),
    ],
)
def test_base_subject(subject: str, base: str, reply: bool) -> None:
    assert base_subject(subject) == (base, reply)


def test_base_subject_of_none() -> None:
    assert base_subject(None) == ("", False)


INTERNAL = dt.datetime(2008, 2, 22, 1, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Fri, 22 Feb 2008 02:00:00 +0200", dt.datetime(2008, 2, 22, 0, 0, tzinfo=UTC)),
        ("22 Feb 2008 02:00 -0100", dt.datetime(2008, 2, 22, 3, 0, tzinfo=UTC)),
        (None, INTERNAL),  # RFC 5256 §2.2: no Date, the internal date
        ("not a date", INTERNAL),
    ],
)
def test_sent_date(header: str | None, expected: dt.datetime) -> None:
    assert sent_date(header, INTERNAL) == expected.timestamp()


def _keys(headers: str, *, size: int = 10, when: dt.datetime = INTERNAL) -> MessageKeys:
    raw = (headers.replace("\n", "\r\n") + "\r\n\r\nbody\r\n").encode()
    return keys_of(analyse(raw), when, size)


@pytest.mark.parametrize(
    ("headers", "attr", "value"),
    [
        ("From: Foo Bar <user@example.org>", "from_", "USER"),  # addr-mailbox only
        ("To: team: a@b.c, d@e.f;", "to", "TEAM"),  # a group's name, as Dovecot
        ("Cc: user2@domain2.org (foo bar)", "cc", "USER2"),
        ("From: =?iso-8859-1?q?foo_aar?= <e@f.g>", "display_from", "FOO AAR"),  # RFC 5957
        ("To: b@c.d", "display_to", "B@C.D"),  # no display name: the addr-spec
        ("To: d", "display_to", "D"),
        ("Subject: Re: Compte rendu", "subject", "COMPTE RENDU"),
        ("References: <a@b> <c@b>\nIn-Reply-To: <z@b>", "references", ("a@b", "c@b")),
        ("In-Reply-To: <z@b> <y@b>", "references", ("z@b",)),  # only the first
        ("Message-ID: <m1@x>", "message_id", "m1@x"),
    ],
)
def test_keys_of(headers: str, attr: str, value: object) -> None:
    assert getattr(_keys(headers), attr) == value


def _k(**kw: object) -> MessageKeys:
    """Keys with the given values set directly (the lazily computed ones included)."""
    mid = kw.pop("message_id", None)
    k = MessageKeys(Envelope(), mid if isinstance(mid, str) else None, None, INTERNAL, 0)
    for name in ("arrival", "size"):
        if name in kw:
            setattr(k, name, kw.pop(name))
    k.__dict__["_subject"] = (kw.pop("subject", ""), kw.pop("reply", False))
    k.__dict__.update(kw)
    return k


S = c.SortCriterion
K = c.SortKey


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ((S(K.ARRIVAL),), [1, 3, 2, 4, 5]),
        # REVERSE reverses the key, never the tie-break by number (RFC 5256 §3)
        ((S(K.ARRIVAL, reverse=True),), [2, 4, 5, 3, 1]),
        ((S(K.ARRIVAL), S(K.SIZE, reverse=True)), [1, 3, 5, 4, 2]),
        ((S(K.SIZE),), [1, 2, 3, 4, 5]),
    ],
)
def test_sort_ties_and_reverse(criteria: tuple[c.SortCriterion, ...], expected: list[int]) -> None:
    # arrival of sort-arrival.mbox: 00:00, 02:00, 01:00, 02:00, 02:00; sizes 7 7 8 8 10
    arrivals = [0, 2, 1, 2, 2]
    sizes = [7, 7, 8, 8, 10]
    items = [
        (i + 1, _k(arrival=float(a), size=z))
        for i, (a, z) in enumerate(zip(arrivals, sizes, strict=True))
    ]
    assert sort_messages(items, criteria) == expected


def test_key_cache_is_bounded() -> None:
    cache = KeyCache(2)
    for n in range(3):
        cache.put(f"b{n}", _k(size=n))
    assert cache.get("b0") is None and cache.get("b2") is not None


# ------------------------------------------------------------------------ threads


def _m(
    mid: str | None,
    refs: tuple[str, ...] = (),
    subject: str = "",
    date: float = 0.0,
    reply: bool = False,
) -> MessageKeys:
    return _k(message_id=mid, references=refs, subject=subject, date=date, reply=reply)


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        # imaptest "thread": 3 references 2 whose References name 1 then 3: the loop is
        # refused and the old link dropped.
        (
            [_m("a@b", date=3), _m("b@b", ("a@b", "c@b"), date=2), _m("c@b", ("b@b",), date=1)],
            "(3 2)(1)",
        ),
        ([_m("a@b"), _m("b@b", ("a@b",), date=1)], "(1 2)"),
        ([_m("a@b"), _m("b@b", date=1)], "(1)(2)"),
        # a missing parent with two children: a dummy root
        ([_m("b@x", ("gone@x",)), _m("c@x", ("gone@x",), date=1)], "((1)(2))"),
        # a missing parent with one child: the child is promoted
        ([_m("b@x", ("gone@x",))], "(1)"),
        # siblings under a parent, by date
        ([_m("p"), _m("c2", ("p",), date=5), _m("c1", ("p",), date=3)], "(1 (3)(2))"),
        # step 5: same base subject; the reply goes under the original
        ([_m("x", subject="S"), _m("y", subject="S", reply=True, date=1)], "(1 2)"),
        # step 5: same base subject, neither a reply: a dummy holds both
        ([_m("x", subject="S"), _m("y", subject="S", date=1)], "((1)(2))"),
        # duplicate Message-ID: the second gets a unique one
        ([_m("d"), _m("d", date=1)], "(1)(2)"),
        # no Message-ID at all
        ([_m(None), _m(None, date=1)], "(1)(2)"),
        # a message referencing itself is no loop
        ([_m("s", ("s",))], "(1)"),
    ],
)
def test_references(messages: list[MessageKeys], expected: str) -> None:
    assert render(references([(i + 1, k) for i, k in enumerate(messages)])) == expected


def test_ordered_subject() -> None:
    msgs = [
        _m("1", subject="B", date=2),
        _m("2", subject="A", date=1),
        _m("3", subject="B", date=1),
        _m("4", subject="A", date=5),
        _m("5", subject="A", date=3),
        _m("6", subject="C", date=0),
    ]
    roots = ordered_subject([(i + 1, k) for i, k in enumerate(msgs)])
    assert render(roots) == "(6)(2 (5)(4))(3 1)"


def test_render_nothing() -> None:
    assert render([]) == ""


# ------------------------------------------------------------- contexts, partial


@pytest.mark.parametrize(
    ("numbers", "text"),
    [([], ""), ([1, 2, 3, 5], "1:3,5"), ([5, 3, 4, 2, 1], "5,3:4,2,1"), ([7], "7")],
)
def test_ordered_set(numbers: list[int], text: str) -> None:
    assert ctx.ordered_set(numbers) == text


@pytest.mark.parametrize(
    ("low", "high", "text"),
    [
        (1, 1, "PARTIAL (1:1 1)"),
        (2, 4, "PARTIAL (2:4 2,4:5)"),
        (2, 10, "PARTIAL (2:10 2,4:5)"),
        (6, 6, "PARTIAL (6:6 NIL)"),
    ],
)
def test_partial_range(low: int, high: int, text: str) -> None:
    assert ctx.partial_range([1, 2, 4, 5], low, high) == text


R = c.SearchReturn


def test_esearch_sorted_min_max_keep_sort_order() -> None:
    out = ctx.esearch(
        "t", True, [5, 3, 9], frozenset({R.MIN, R.MAX, R.ALL, R.COUNT}), None, sorted_result=True
    )
    assert out == 'ESEARCH (TAG "t") UID MIN 5 MAX 9 ALL 5,3,9 COUNT 3'
    out = ctx.esearch(
        "t", False, [5, 3, 9], frozenset({R.MIN, R.MAX, R.ALL}), None, sorted_result=False
    )
    assert out == 'ESEARCH (TAG "t") MIN 3 MAX 9 ALL 3,5,9'


@pytest.mark.parametrize(
    ("options", "saved"),
    [
        (frozenset({R.SAVE}), [2, 4, 9]),
        (frozenset({R.SAVE, R.MIN}), [2]),
        (frozenset({R.SAVE, R.MIN, R.MAX}), [2, 9]),
        (frozenset({R.SAVE, R.MIN, R.COUNT}), [2, 4, 9]),  # RFC 5182 §2.4
    ],
)
def test_to_save(options: frozenset[c.SearchReturn], saved: list[int]) -> None:
    assert ctx.to_save([2, 4, 9], options) == saved


def test_resolve_saved_replaces_dollar_everywhere() -> None:
    dollar = c.SearchSequence(c.SequenceSet(saved=True), uid=False)
    key = c.SearchOr(c.SearchNot(dollar), c.SearchAnd((dollar, c.SearchAll())))
    out = ctx.resolve_saved(key, [3, 4, 5, 9])
    uids = c.SearchSequence(c.SequenceSet((c.SeqRange(3, 5), c.SeqRange(9, 9))), uid=True)
    assert out == c.SearchOr(c.SearchNot(uids), c.SearchAnd((uids, c.SearchAll())))
    empty = ctx.resolve_saved(dollar, [])
    assert isinstance(empty, c.SearchSequence) and not empty.sequence_set.contains(1, 10)


def _context(
    sort: bool, options: frozenset[c.SearchReturn], result: list[int]
) -> ctx.SearchContext:
    return ctx.SearchContext(
        tag="T",
        uid=True,
        criteria=c.SearchAll(),
        sort=(S(K.ARRIVAL),) if sort else None,
        options=options,
        result=result,
    )


def test_search_context_updates() -> None:
    live = _context(False, frozenset({R.ALL}), [1, 2])
    assert live.update([1, 2], lambda u: u) is None
    assert live.update([1, 2, 4, 5], lambda u: u) == 'ESEARCH (TAG "T") UID ADDTO (0 4:5)'
    assert live.update([2, 5], lambda u: u) == 'ESEARCH (TAG "T") UID REMOVEFROM (0 1,4)'
    assert live.drop(5, 2) == 'ESEARCH (TAG "T") UID REMOVEFROM (0 5)'
    assert live.drop(7, 3) is None and live.result == [2]


def _apply(old: list[int], update: str) -> list[int]:
    """Apply an ESORT update the way a client does (RFC 5267 §4.3), pair by pair."""
    out = list(old)
    mode = ""
    for m in re.finditer(r"(REMOVEFROM|ADDTO)|\((\d+) (\d+)\)", update):
        if m.group(1):
            mode = m.group(1)
            continue
        pos, uid = int(m.group(2)), int(m.group(3))
        if mode == "REMOVEFROM":
            assert out.pop(pos - 1) == uid
        else:
            out.insert(pos - 1, uid)
    return out


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ([10, 20, 30], [40, 30, 10]),  # one leaves, one arrives first, two swap
        ([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]),
        ([1, 2, 3], [1, 2, 3, 4]),
        ([1, 2, 3], []),
        ([], [3, 1, 2]),
        ([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5]),
    ],
)
def test_sort_context_updates_rebuild_the_new_order(old: list[int], new: list[int]) -> None:
    live = _context(True, frozenset({R.ALL}), old)
    out = live.update(new, lambda u: u)
    assert out is not None and out.startswith('ESEARCH (TAG "T") UID ')
    assert _apply(old, out) == new
    assert live.result == new


def test_sort_context_drop_names_the_old_position() -> None:
    live = _context(True, frozenset({R.ALL}), [10, 20, 30])
    assert live.drop(20, 7) == 'ESEARCH (TAG "T") UID REMOVEFROM (2 20)'
    assert live.result == [10, 30]


def test_count_context_sends_new_count() -> None:
    live = _context(False, frozenset({R.COUNT, R.MIN}), [1, 2])
    assert live.update([1, 2, 3], lambda u: u) == 'ESEARCH (TAG "T") UID MIN 1 COUNT 3'
    assert live.drop(1, 1) is None and live.stale
    assert live.update([2, 3], lambda u: u) == 'ESEARCH (TAG "T") UID MIN 2 COUNT 2'
