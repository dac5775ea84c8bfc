"""DotReader (relay.smtp.dataread): the DATA content from chunks of any size gives the
same answer as reading it line by line."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.smtp import replies
from relay.smtp.dataread import DotReader

MAX_LINE = 20
MAX_MESSAGE = 120


def by_lines(stream: bytes) -> tuple[bytes, str | None, bytes] | None:
    """The reference: one line (up to the first CRLF) at a time, as RFC 5321 reads it.
    None when the end line never comes."""
    content = bytearray()
    problem: str | None = None
    pos = 0
    while True:
        cut = stream.find(b"\r\n", pos)
        if cut < 0:
            return None
        line, pos = stream[pos:cut], cut + 2
        if line == b".":
            return bytes(content), problem, stream[pos:]
        if problem is not None:
            continue
        if len(line) + 2 > MAX_LINE:
            problem = replies.LINE_TOO_LONG.format(limit=MAX_LINE)
        elif b"\r" in line or b"\n" in line:
            problem = replies.BARE_LINE_ENDING
        else:
            content += (line[1:] if line[:1] == b"." else line) + b"\r\n"
            if len(content) > MAX_MESSAGE:
                problem = replies.TOO_BIG.format(limit=MAX_MESSAGE)
        if problem is not None:
            content.clear()


def chunked(stream: bytes, cuts: list[int]) -> tuple[bytes, str | None, bytes] | None:
    reader = DotReader(max_line_bytes=MAX_LINE, max_message_bytes=MAX_MESSAGE)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in itertools.pairwise(points):
        after = reader.feed(stream[a:b])
        if after is not None:
            rest = after + stream[b:]
            return bytes(reader.content), reader.problem, rest
    return None


# Lines from pieces that make every case likely: dots, CR, LF, CRLF, long runs.
_piece = st.sampled_from([b"a", b"b", b".", b"..", b"\r", b"\n", b"\r\n", b"x" * 9, b" "])
_line = st.lists(_piece, max_size=6).map(b"".join)
_stream = st.lists(_line, max_size=12).map(lambda ls: b"".join(line + b"\r\n" for line in ls))


@settings(max_examples=1500, deadline=None)
@given(_stream, st.lists(st.integers(min_value=0, max_value=400), max_size=8), st.booleans())
def test_any_cut_gives_the_line_by_line_answer(body: bytes, cuts: list[int], ended: bool) -> None:
    stream = body + (b".\r\nQUIT\r\n" if ended else b"")
    assert chunked(stream, cuts) == by_lines(stream)


@settings(max_examples=300, deadline=None)
@given(_stream)
def test_one_byte_at_a_time(body: bytes) -> None:
    stream = body + b".\r\nNOOP\r\n"
    assert chunked(stream, list(range(len(stream)))) == by_lines(stream)


def test_dot_stuffing_is_undone_and_the_next_command_is_kept() -> None:
    reader = DotReader(max_line_bytes=1000, max_message_bytes=0)
    after = reader.feed(b"Subject: x\r\n\r\n..one\r\n.two\r\n.\r\nQUIT\r\n")
    assert after == b"QUIT\r\n"
    assert bytes(reader.content) == b"Subject: x\r\n\r\n.one\r\ntwo\r\n"
    assert reader.problem is None


def test_an_empty_message() -> None:
    reader = DotReader(max_line_bytes=1000, max_message_bytes=0)
    assert reader.feed(b".\r\n") == b""
    assert bytes(reader.content) == b""


def test_smuggled_end_is_not_an_end() -> None:
    """`\\n.\\r\\n` (and `\\r.\\r\\n`) is no end of data here; the message is refused
    whole and the real end still ends it (test_smtp_smuggling.py over the wire)."""
    for smuggled in (b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\n.\n"):
        reader = DotReader(max_line_bytes=1000, max_message_bytes=0)
        stream = b"Subject: a\r\n\r\nbody" + smuggled + b"MAIL FROM:<x@y>\r\n.\r\n"
        assert reader.feed(stream) == b""
        assert reader.problem == replies.BARE_LINE_ENDING
        assert bytes(reader.content) == b""


def test_a_line_at_the_limit_cut_between_cr_and_lf_is_kept() -> None:
    reader = DotReader(max_line_bytes=10, max_message_bytes=0)
    assert reader.feed(b"12345678\r") is None
    assert reader.feed(b"\n.\r\n") == b""
    assert reader.problem is None
    assert bytes(reader.content) == b"12345678\r\n"


def test_a_line_past_the_limit_is_refused_before_its_end_comes() -> None:
    reader = DotReader(max_line_bytes=10, max_message_bytes=0)
    assert reader.feed(b"ok\r\n" + b"x" * 50) is None
    assert reader.problem == replies.LINE_TOO_LONG.format(limit=10)
    assert len(reader._pending) <= 1  # the long line is not kept while it goes on
    # Its rest is part of the same line: a "." there is no end line.
    assert reader.feed(b"y" * 50 + b".\r\n") is None
    assert reader.feed(b"more\r\n.\r\nQUIT\r\n") == b"QUIT\r\n"
