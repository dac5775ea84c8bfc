"""Tests for `relay.imap.response` serialisation helpers."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.imap import commands as c
from relay.imap import response as r
from relay.imap.parser import decode_mailbox_name, parse_command


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", b'""'),
        ("bob", b'"bob"'),
        ('say "hi"', b'"say \\"hi\\""'),
        ("a\\b", b'"a\\\\b"'),
        (b"raw", b'"raw"'),
    ],
)
def test_quoted(value: str | bytes, expected: bytes) -> None:
    assert r.quoted(value) == expected


@pytest.mark.parametrize("value", ["a\r\nb", "a\nb", "nul\x00", "caf\u00e9", "tab\t"])
def test_quoted_refuses_what_a_quoted_string_cannot_carry(value: str) -> None:
    with pytest.raises(ValueError):
        r.quoted(value)


def test_quoted_utf8_when_enabled() -> None:
    assert r.quoted("café", utf8=True) == '"café"'.encode()
    with pytest.raises(ValueError):
        r.quoted("a\r\n", utf8=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", b'"plain"'),
        ('with "quotes"', b'"with \\"quotes\\""'),
        ("two\r\nlines", b"{10}\r\ntwo\r\nlines"),
        ("caf\u00e9", b"{5}\r\ncaf\xc3\xa9"),
        (b"\x00", b"{1}\r\n\x00"),
        ("x" * 2000, b"{2000}\r\n" + b"x" * 2000),
    ],
)
def test_string_picks_quoted_or_literal(value: str | bytes, expected: bytes) -> None:
    assert r.string(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("INBOX", b"INBOX"),
        ("Partages/secretariat@cpts.example/INBOX", b"Partages/secretariat@cpts.example/INBOX"),
        ("a]b", b"a]b"),
        ("", b'""'),
        ("two words", b'"two words"'),
        ("Sent*", b'"Sent*"'),
        ("nil", b'"nil"'),
        ("(x)", b'"(x)"'),
    ],
)
def test_astring(value: str, expected: bytes) -> None:
    assert r.astring(value) == expected


def test_nstring_literal_and_lists() -> None:
    assert r.nstring(None) == b"NIL"
    assert r.nstring("NIL") == b'"NIL"'
    assert r.literal("abc") == b"{3}\r\nabc"
    assert r.flag_list(["\\Seen", "$Forwarded"]) == b"(\\Seen $Forwarded)"
    assert r.flag_list([]) == b"()"
    assert r.paren([b"1", "2"]) == b"(1 2)"


def test_tagged_responses() -> None:
    assert r.tagged("a1", r.Status.OK, "LOGIN completed") == b"a1 OK LOGIN completed\r\n"
    assert (
        r.tagged("a2", r.Status.NO, "Mailbox is full", r.ResponseCode.OVERQUOTA)
        == b"a2 NO [OVERQUOTA] Mailbox is full\r\n"
    )
    assert (
        r.tagged("a3", r.Status.OK, "Done", r.copyuid(38505, [304, 319, 320], [3956, 3957, 3958]))
        == b"a3 OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n"
    )
    assert r.tagged("a4", r.Status.BAD, "") == b"a4 BAD completed\r\n"
    # Server text never breaks the line, whatever went into it.
    assert r.tagged("a5", r.Status.NO, "x\r\n* OK forged") == b"a5 NO x  * OK forged\r\n"


@pytest.mark.parametrize("tag", ["", "a b", "+", "a\r\n", "*"])
def test_tagged_refuses_invalid_tags(tag: str) -> None:
    with pytest.raises(ValueError):
        r.tagged(tag, r.Status.OK, "x")


def test_tagged_refuses_untagged_only_statuses() -> None:
    with pytest.raises(ValueError):
        r.tagged("a", r.Status.BYE, "x")


def test_untagged_and_continuation() -> None:
    assert r.untagged("3 EXISTS") == b"* 3 EXISTS\r\n"
    assert r.untagged(b"SEARCH 2 5") == b"* SEARCH 2 5\r\n"
    assert (
        r.untagged_status(r.Status.OK, "Predicted next UID", r.uidnext(4392))
        == b"* OK [UIDNEXT 4392] Predicted next UID\r\n"
    )
    assert (
        r.untagged_status(r.Status.OK, "Flags", r.permanentflags(["\\Seen", "\\Deleted"]))
        == b"* OK [PERMANENTFLAGS (\\Seen \\Deleted \\*)] Flags\r\n"
    )
    assert r.untagged_status(r.Status.BYE, "Autologout") == b"* BYE Autologout\r\n"
    assert r.continuation() == b"+ Ready\r\n"
    assert r.continuation("idling") == b"+ idling\r\n"
    assert r.sasl_challenge(b"") == b"+ \r\n"
    assert r.sasl_challenge(b"abc") == b"+ YWJj\r\n"


def test_response_codes() -> None:
    names = {code.value for code in r.ResponseCode}
    for needed in (
        "ALERT", "NOPERM", "TRYCREATE", "TOOBIG", "CANNOT", "NONEXISTENT", "ALREADYEXISTS",
        "AUTHENTICATIONFAILED", "PRIVACYREQUIRED", "LIMIT", "UIDNEXT", "UIDVALIDITY",
        "PERMANENTFLAGS", "READ-ONLY", "READ-WRITE", "HIGHESTMODSEQ", "APPENDUID", "COPYUID",
        "CLIENTBUG", "CONTACTADMIN", "SERVERBUG", "UNAVAILABLE", "EXPUNGEISSUED", "INUSE",
        "OVERQUOTA", "NOMODSEQ", "BADCHARSET",
    ):  # fmt: skip
        assert needed in names
    assert str(r.appenduid(1, [7])) == "APPENDUID 1 7"
    assert str(r.uidvalidity(3857529045)) == "UIDVALIDITY 3857529045"
    assert str(r.highestmodseq(715194045007)) == "HIGHESTMODSEQ 715194045007"
    assert str(r.unseen(12)) == "UNSEEN 12"
    assert str(r.modified([7, 9])) == "MODIFIED 7,9"
    assert str(r.capability_code(["IMAP4rev1", "IDLE"])) == "CAPABILITY IMAP4rev1 IDLE"
    assert str(r.Code(r.ResponseCode.READ_ONLY)) == "READ-ONLY"
    with pytest.raises(ValueError):
        r.copyuid(1, [1, 2], [3])


@pytest.mark.parametrize(
    ("numbers", "expected"),
    [
        ([1], "1"),
        ([1, 2, 3, 4, 5, 7], "1:5,7"),
        ([304, 319, 320], "304,319:320"),
        ([5, 6, 1, 2], "5:6,1:2"),
        ([3, 2, 1], "3,2,1"),
        ([1, 3, 5], "1,3,5"),
        ([1, 1], "1,1"),
    ],
)
def test_sequence_set_compaction(numbers: list[int], expected: str) -> None:
    assert r.sequence_set(numbers) == expected


@pytest.mark.parametrize("numbers", [[], [0], [-1]])
def test_sequence_set_refuses(numbers: list[int]) -> None:
    with pytest.raises(ValueError):
        r.sequence_set(numbers)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 10_000), min_size=1, max_size=60))
def test_sequence_set_round_trip(numbers: list[int]) -> None:
    text = r.sequence_set(sorted(set(numbers)))
    parsed = parse_command(b"a UID COPY " + text.encode() + b" x")
    assert isinstance(parsed, c.Copy)
    assert list(parsed.sequence_set.iter(10_000)) == sorted(set(numbers))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            dt.datetime(1996, 7, 17, 2, 44, 25, tzinfo=dt.timezone(-dt.timedelta(hours=7))),
            '"17-Jul-1996 02:44:25 -0700"',
        ),
        (dt.datetime(2024, 1, 5, 23, 0, 0, tzinfo=dt.UTC), '" 5-Jan-2024 23:00:00 +0000"'),
        (
            dt.datetime(
                2024, 12, 31, 0, 0, 9, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))
            ),
            '"31-Dec-2024 00:00:09 +0530"',
        ),
        (
            dt.datetime(2024, 3, 1, tzinfo=dt.timezone(-dt.timedelta(hours=3, minutes=30))),
            '" 1-Mar-2024 00:00:00 -0330"',
        ),
    ],
)
def test_date_time(value: dt.datetime, expected: str) -> None:
    assert r.date_time(value) == expected


def test_date_time_refuses_naive() -> None:
    with pytest.raises(ValueError):
        r.date_time(dt.datetime(2024, 1, 1))


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(
        min_value=dt.datetime(1900, 1, 1),
        max_value=dt.datetime(9999, 1, 1),
        timezones=st.sampled_from(
            [
                dt.UTC,
                dt.timezone(dt.timedelta(hours=2)),
                dt.timezone(-dt.timedelta(hours=9, minutes=30)),
            ]
        ),
    )
)
def test_date_time_round_trips_through_append(value: dt.datetime) -> None:
    value = value.replace(microsecond=0)
    parsed = parse_command(b"a APPEND x " + r.date_time(value).encode() + b" {1}\r\nm")
    assert isinstance(parsed, c.Append)
    assert parsed.internal_date == value
    assert parsed.internal_date is not None
    assert parsed.internal_date.utcoffset() == value.utcoffset()


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b"FLAGS", "FLAGS"),
        (b"RFC822.SIZE", "RFC822.SIZE"),
        (b"BODY", "BODY"),
        (b"BODY[]", "BODY[]"),
        (b"BODY.PEEK[]<0.2048>", "BODY[]<0>"),
        (b"BODY.PEEK[HEADER.FIELDS (from To)]", "BODY[HEADER.FIELDS (FROM TO)]"),
        (b"BODY[1.2.MIME]", "BODY[1.2.MIME]"),
        (b"BODY[3.TEXT]<5.10>", "BODY[3.TEXT]<5>"),
        (b"BINARY.PEEK[1]<0.1>", "BINARY[1]<0>"),
        (b"BINARY[]", "BINARY[]"),
        (b"BINARY.SIZE[2.1]", "BINARY.SIZE[2.1]"),
        (b"MODSEQ", "MODSEQ"),
    ],
)
def test_fetch_item_name(wire: bytes, expected: str) -> None:
    parsed = parse_command(b"a FETCH 1 " + wire)
    assert isinstance(parsed, c.Fetch)
    assert r.fetch_item_name(parsed.attributes[0]) == expected


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("INBOX", "INBOX"),
        ("Envoyés", "Envoy&AOk-s"),
        ("Tom & Jerry", "Tom &- Jerry"),
        ("台北", "&U,BTFw-"),
        ("Éé", "&AMkA6Q-"),
    ],
)
def test_encode_mailbox_name(name: str, encoded: str) -> None:
    assert r.encode_mailbox_name(name) == encoded


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_mailbox_name_round_trip(name: str) -> None:
    encoded = r.encode_mailbox_name(name)
    assert encoded.isascii()
    assert decode_mailbox_name(encoded) == name


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.characters(codec="utf-8", blacklist_characters="\x00"),
        max_size=40,
    )
)
def test_string_round_trips_through_login(value: str) -> None:
    parsed = parse_command(b"a LOGIN " + r.astring(value) + b" " + r.string(value) + b"\r\n")
    assert parsed == c.Login(tag="a", username=value, password=value)
