"""Framing tests for `relay.imap.parser.CommandReader`: literals, limits, raw lines."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.imap import commands as c
from relay.imap.parser import (
    CommandReader,
    Event,
    FailureKind,
    NeedContinuation,
    NeedData,
    ParseFailure,
    SaslCancelled,
    decode_mailbox_name,
    is_idle_done,
    parse_command,
    parse_sasl_response,
)
from tests.imap.test_parser import VALID

LINE = 64
LITERAL = 100


def reader(*, literal_plus: bool = True, max_command_bytes: int | None = None) -> CommandReader:
    return CommandReader(
        max_line_bytes=LINE,
        max_literal_bytes=LITERAL,
        literal_plus=literal_plus,
        max_command_bytes=max_command_bytes,
    )


def drain(r: CommandReader) -> list[Event]:
    events: list[Event] = []
    for _ in range(10_000):
        event = r.next_event()
        if isinstance(event, NeedData):
            return events
        events.append(event)
    raise AssertionError("reader did not settle")


def run(data: bytes, *, bytewise: bool = False, **kw: bool) -> list[Event]:
    r = reader(**kw)
    out: list[Event] = []
    for chunk in [data[i : i + 1] for i in range(len(data))] if bytewise else [data]:
        r.feed(chunk)
        out.extend(drain(r))
    return out


def both(data: bytes, **kw: bool) -> list[Event]:
    whole = run(data, **kw)
    assert run(data, bytewise=True, **kw) == whole
    return whole


def failure(tag: str | None, kind: FailureKind) -> tuple[str | None, FailureKind]:
    return (tag, kind)


def summary(events: list[Event]) -> list[object]:
    return [(e.tag, e.kind) if isinstance(e, ParseFailure) else e for e in events]


def test_pipelined_commands_in_one_read() -> None:
    assert both(b"a NOOP\r\nb CAPABILITY\r\nc LOGOUT\r\n") == [
        c.Noop(tag="a"),
        c.Capability(tag="b"),
        c.Logout(tag="c"),
    ]


def test_nothing_before_crlf() -> None:
    r = reader()
    r.feed(b"a NOOP\r")
    assert isinstance(r.next_event(), NeedData)
    r.feed(b"\n")
    assert r.next_event() == c.Noop(tag="a")
    assert isinstance(r.next_event(), NeedData)


def test_synchronizing_literal_flow() -> None:
    r = reader()
    r.feed(b"a LOGIN {3}\r\n")
    assert r.next_event() == NeedContinuation(3)
    assert isinstance(r.next_event(), NeedData)  # asked once only
    r.feed(b"bo")
    assert isinstance(r.next_event(), NeedData)
    r.feed(b"b {2}\r\n")
    assert r.next_event() == NeedContinuation(2)
    r.feed(b"pw\r\nb NOOP\r\n")
    assert r.next_event() == c.Login(tag="a", username="bob", password="pw")
    assert r.next_event() == c.Noop(tag="b")


def test_zero_length_synchronizing_literal_still_asks() -> None:
    assert both(b"a LOGIN {0}\r\n {0}\r\n\r\n") == [
        NeedContinuation(0),
        NeedContinuation(0),
        c.Login(tag="a", username="", password=""),
    ]


def test_non_synchronizing_literal_needs_no_continuation() -> None:
    # RFC 7888: the client sends the literal at once.
    assert both(b"a LOGIN {3+}\r\nbob {2+}\r\npw\r\n") == [
        c.Login(tag="a", username="bob", password="pw")
    ]


def test_literal_may_contain_crlf_and_braces() -> None:
    message = b"Subject: x {5}\r\n\r\nb NOOP\r\n"
    wire = b"a APPEND INBOX {%d}\r\n" % len(message) + message + b"\r\n"
    assert both(wire) == [
        NeedContinuation(len(message)),
        c.Append(tag="a", mailbox="INBOX", message=message),
    ]


def test_binary_literal() -> None:
    assert both(b"a APPEND x ~{3+}\r\n\x00\xff\x00\r\n") == [
        c.Append(tag="a", mailbox="x", message=b"\x00\xff\x00", binary=True)
    ]


def test_non_synchronizing_literal_refused_without_literal_plus() -> None:
    events = both(b"a LOGIN {3+}\r\nbob pw\r\nb NOOP\r\n", literal_plus=False)
    assert summary(events) == [("a", FailureKind.SYNTAX), c.Noop(tag="b")]


def test_oversize_synchronizing_literal_is_refused_before_continuation() -> None:
    events = both(b"a APPEND x {101}\r\nb NOOP\r\n")
    assert summary(events) == [("a", FailureKind.LITERAL_TOO_BIG), c.Noop(tag="b")]
    fail = events[0]
    assert isinstance(fail, ParseFailure)
    assert (fail.status, fail.code) == ("NO", "TOOBIG")


def test_literal_at_the_limit_is_accepted() -> None:
    body = b"x" * LITERAL
    events = both(b"a APPEND x {100}\r\n" + body + b"\r\n")
    assert events[-1] == c.Append(tag="a", mailbox="x", message=body)


def test_oversize_non_synchronizing_literal_is_swallowed() -> None:
    # The literal's bytes look like commands: none may run (RFC 7888 §4).
    payload = b"x LOGOUT\r\n" * 20  # 200 octets
    wire = b"a APPEND x {200+}\r\n" + payload + b" {3+}\r\nabc tail\r\nb NOOP\r\n"
    events = both(wire)
    assert summary(events) == [("a", FailureKind.LITERAL_TOO_BIG), c.Noop(tag="b")]


def test_huge_announced_literal_is_streamed_not_buffered() -> None:
    r = reader()
    r.feed(b"a APPEND x {4000000000+}\r\n")
    assert summary(drain(r)) == [("a", FailureKind.LITERAL_TOO_BIG)]
    for _ in range(10):
        r.feed(b"\x00" * 10_000)
        assert drain(r) == []
        assert r.buffered_bytes == 0


def test_over_long_line_is_refused_and_skipped() -> None:
    long_line = b"a LOGIN " + b"x" * 200 + b" pw\r\n"
    events = both(long_line + b"b NOOP\r\n")
    assert summary(events) == [("a", FailureKind.LINE_TOO_LONG), c.Noop(tag="b")]


def test_line_at_the_limit_is_accepted_one_more_is_not() -> None:
    prefix = b"a LOGIN bob "
    fits = prefix + b"p" * (LINE - len(prefix) - 2) + b"\r\n"
    assert len(fits) == LINE
    assert both(fits)[0] == c.Login(
        tag="a", username="bob", password="p" * (LINE - len(prefix) - 2)
    )
    too_long = prefix + b"p" * (LINE - len(prefix) - 1) + b"\r\n"
    assert summary(both(too_long)) == [("a", FailureKind.LINE_TOO_LONG)]


def test_endless_line_keeps_memory_bounded() -> None:
    r = reader()
    r.feed(b"a LOGIN ")
    for _ in range(100):
        r.feed(b"y" * 1000)
        events = drain(r)
        assert all(isinstance(e, ParseFailure) for e in events)
        assert r.buffered_bytes <= LINE
    r.feed(b"\r\nb NOOP\r\n")
    assert drain(r) == [c.Noop(tag="b")]


def test_over_long_line_without_tag() -> None:
    assert summary(both(b"\x00" * 100 + b"\r\n")) == [(None, FailureKind.LINE_TOO_LONG)]


def test_over_long_line_after_a_literal_reports_the_command_tag() -> None:
    events = both(b"t1 LOGIN {3}\r\nbob " + b"z" * 100 + b"\r\nt2 NOOP\r\n")
    assert summary(events) == [
        NeedContinuation(3),
        ("t1", FailureKind.LINE_TOO_LONG),
        c.Noop(tag="t2"),
    ]


def test_many_small_literals_hit_the_command_bound() -> None:
    wire = b"a LOGIN" + b" {1+}\r\nx" * 30 + b"\r\nb NOOP\r\n"
    r = CommandReader(max_line_bytes=LINE, max_literal_bytes=LITERAL, max_command_bytes=100)
    r.feed(wire)
    assert summary(drain(r)) == [("a", FailureKind.COMMAND_TOO_LONG), c.Noop(tag="b")]


def test_syntax_error_then_recovery() -> None:
    assert summary(both(b"a FETCH\r\n\r\nb NOOP\r\n")) == [
        ("a", FailureKind.SYNTAX),
        (None, FailureKind.SYNTAX),
        c.Noop(tag="b"),
    ]


def test_read_line_for_authenticate() -> None:
    r = reader()
    r.feed(b"a AUTHENTICATE PLAIN\r\nAGJvYgBw")
    assert r.next_event() == c.Authenticate(tag="a", mechanism="PLAIN")
    assert r.read_line() is None
    r.feed(b"dw==\r\n*\r\nb NOOP\r\n")
    line = r.read_line()
    assert line == b"AGJvYgBwdw=="
    assert parse_sasl_response(line) == b"\x00bob\x00pw"
    cancel = r.read_line()
    assert isinstance(cancel, bytes) and isinstance(parse_sasl_response(cancel), SaslCancelled)
    assert r.next_event() == c.Noop(tag="b")


def test_read_line_for_idle_done() -> None:
    r = reader()
    r.feed(b"a IDLE\r\n")
    assert r.next_event() == c.Idle(tag="a")
    assert r.read_line() is None
    r.feed(b"done\r\n")
    line = r.read_line()
    assert isinstance(line, bytes) and is_idle_done(line)
    assert not is_idle_done(b"DONE NOW")


def test_read_line_too_long() -> None:
    r = reader()
    r.feed(b"q" * 100)
    result = r.read_line()
    assert isinstance(result, ParseFailure) and result.kind is FailureKind.LINE_TOO_LONG
    r.feed(b"q\r\nshort\r\n")
    assert r.read_line() == b"short"


def test_read_line_in_the_middle_of_a_command_is_a_programming_error() -> None:
    r = reader()
    r.feed(b"a LOGIN {3}\r\n")
    assert r.next_event() == NeedContinuation(3)
    with pytest.raises(RuntimeError):
        r.read_line()


def test_starttls_command_injection() -> None:
    # Plaintext pipelined after STARTTLS must not run after the handshake (RFC 3501
    # §11.1): the edge discards the buffer when it answers STARTTLS.
    r = reader()
    r.feed(b"a STARTTLS\r\nb LOGIN evil evil\r\n")
    assert r.next_event() == c.StartTls(tag="a")
    r.discard_buffered()
    assert isinstance(r.next_event(), NeedData)
    r.feed(b"c NOOP\r\n")
    assert r.next_event() == c.Noop(tag="c")


@pytest.mark.parametrize(
    ("line", "expected"),
    [(b"", b""), (b"=", b""), (b"YWJj", b"abc"), (b"YWI=", b"ab"), (b"YW", None), (b"!!!!", None)],
)
def test_parse_sasl_response(line: bytes, expected: bytes | None) -> None:
    assert parse_sasl_response(line) == expected


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("INBOX", "INBOX"),
        ("Envoy&AOk-s", "Envoyés"),
        ("&-", "&"),
        ("Tom &- Jerry", "Tom & Jerry"),
        ("&U,BTFw-", "台北"),
        ("&AGE-", None),  # printable ASCII must not be encoded
        ("&AOk", None),
        ("&A!k-", None),
        ("caf\u00e9", None),
    ],
)
def test_decode_mailbox_name(encoded: str, decoded: str | None) -> None:
    assert decode_mailbox_name(encoded) == decoded


def test_constructor_rejects_absurd_limits() -> None:
    with pytest.raises(ValueError):
        CommandReader(max_line_bytes=1, max_literal_bytes=10)


# ------------------------------------------------------------------ property tests

ALLOWED = (c.Command, NeedContinuation, ParseFailure)

# Pieces of IMAP that reach deep into the grammar when glued together at random.
TOKENS = st.sampled_from(
    [
        b"a",
        b"t1 ",
        b" ",
        b"\r\n",
        b"\r",
        b"\n",
        b"UID ",
        b"FETCH",
        b"SEARCH",
        b"STORE",
        b"APPEND",
        b"LOGIN",
        b"LIST",
        b"STATUS",
        b"SELECT",
        b"AUTHENTICATE",
        b"ID",
        b"SETACL",
        b"CREATE",
        b"COPY",
        b"ENABLE",
        b"1:*",
        b"$",
        b"*",
        b"4,5:7",
        b"0",
        b"(",
        b")",
        b"[",
        b"]",
        b"<",
        b">",
        b".",
        b"BODY",
        b".PEEK",
        b"HEADER.FIELDS",
        b"MIME",
        b"BINARY",
        b"FLAGS",
        b"+FLAGS.SILENT",
        b"\\Seen",
        b'"',
        b"\\",
        b"{3}\r\n",
        b"{2+}\r\n",
        b"~{1}\r\n",
        b"{99999999999}\r\n",
        b"{1000+}\r\n",
        b"NOT",
        b"OR",
        b"CHARSET",
        b"UTF-8",
        b"RETURN",
        b"1-Jan-2024",
        b'"17-Jul-1996 02:44:25 -0700"',
        b"NIL",
        b"INBOX",
        b"MODSEQ",
        b"CHANGEDSINCE",
        b"UNCHANGEDSINCE",
        b"USE",
        b"\xc3\xa9",
        b"\xff",
        b"\x00",
        b"=",
    ]
)
IMAPISH = st.lists(TOKENS, max_size=40).map(b"".join)
STREAMS = st.one_of(st.binary(max_size=300), IMAPISH)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(0, p), len(data)) for p in cuts})
    out, last = [], 0
    for p in [*points, len(data)]:
        out.append(data[last:p])
        last = p
    return out


@settings(max_examples=400, deadline=None)
@given(data=STREAMS, cuts=st.lists(st.integers(0, 300), max_size=12))
def test_any_bytes_give_only_events_and_chunking_does_not_matter(
    data: bytes, cuts: list[int]
) -> None:
    whole = run(data)
    r = reader()
    chunked: list[Event] = []
    for chunk in _chunks(data, cuts):
        r.feed(chunk)
        chunked.extend(drain(r))
    assert chunked == whole
    assert all(isinstance(e, ALLOWED) for e in whole)
    assert r.buffered_bytes < LINE  # what is left is at most an unfinished line


@settings(max_examples=400, deadline=None)
@given(data=STREAMS)
def test_parse_command_never_raises(data: bytes) -> None:
    assert isinstance(parse_command(data), c.Command | ParseFailure)


@settings(max_examples=200, deadline=None)
@given(data=STREAMS, lines=st.integers(1, 5))
def test_read_line_never_raises(data: bytes, lines: int) -> None:
    r = reader()
    r.feed(data)
    for _ in range(lines):
        result = r.read_line()
        assert result is None or isinstance(result, bytes | ParseFailure)
        if isinstance(result, bytes):
            assert b"\r\n" not in result and len(result) <= LINE - 2
            assert isinstance(parse_sasl_response(result), bytes | SaslCancelled | None)


SEQ_NUMBER = st.one_of(st.none(), st.integers(1, 2**32 - 1))
SEQ_SETS = st.one_of(
    st.just(c.SequenceSet(saved=True)),
    st.lists(st.builds(c.SeqRange, SEQ_NUMBER, SEQ_NUMBER), min_size=1, max_size=8).map(
        lambda rs: c.SequenceSet(tuple(rs))
    ),
)


@settings(max_examples=300, deadline=None)
@given(seqset=SEQ_SETS)
def test_sequence_set_round_trips_through_the_parser(seqset: c.SequenceSet) -> None:
    text = str(seqset).encode()
    result = parse_command(b"a UID FETCH " + text + b" FLAGS")
    assert isinstance(result, c.Fetch)
    assert result.sequence_set == seqset
    assert str(result.sequence_set).encode() == text


@settings(max_examples=300, deadline=None)
@given(seqset=SEQ_SETS.filter(lambda s: not s.saved), largest=st.integers(0, 60))
def test_sequence_set_iter_matches_contains(seqset: c.SequenceSet, largest: int) -> None:
    members = list(seqset.iter(largest))
    assert members == sorted(set(members))
    assert members == [n for n in range(1, largest + 1) if seqset.contains(n, largest)]


def _mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    for pos, cut, insert in edits:
        p = pos % (len(data) + 1)
        data = data[:p] + insert + data[p + cut :]
    return data


@settings(max_examples=400, deadline=None)
@given(
    row=st.sampled_from(VALID),
    edits=st.lists(
        st.tuples(
            st.integers(0, 400),
            st.integers(0, 3),
            st.sampled_from(
                [
                    b"",
                    b" ",
                    b"(",
                    b")",
                    b"{",
                    b"}",
                    b"\r\n",
                    b'"',
                    b"\\",
                    b"0",
                    b"*",
                    b"]",
                    b"[",
                    b"<",
                    b".",
                    b"+",
                    b"\xff",
                ]
            ),
        ),
        max_size=3,
    ),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_mutated_valid_commands_give_only_events(
    row: tuple[bytes, c.Command], edits: list[tuple[int, int, bytes]], cuts: list[int]
) -> None:
    data = _mutate(row[0], edits) + b"\r\n"
    r = CommandReader(max_line_bytes=8192, max_literal_bytes=1 << 20)
    events: list[Event] = []
    for chunk in _chunks(data, cuts):
        r.feed(chunk)
        events.extend(drain(r))
    whole = CommandReader(max_line_bytes=8192, max_literal_bytes=1 << 20)
    whole.feed(data)
    assert drain(whole) == events
    assert all(isinstance(e, ALLOWED) for e in events)
    if not edits:
        assert events[-1] == row[1]
