"""RFC 2231 parameter continuations and charsets, repeated header fields, pure."""

from __future__ import annotations

import pytest

from relay.message.analysis import analyse, parse_content_type, rfc2231_decode


@pytest.mark.parametrize(
    ("value", "params"),
    [
        ('text/plain; charset="utf-8"', (("charset", "utf-8"),)),
        # §3 continuations, all plain: one ordinary parameter
        (
            'application/pdf; name*0="compte-"; name*1="rendu.pdf"',
            (("name", "compte-rendu.pdf"),),
        ),
        # out of order on the wire, in order in the value
        ('a/b; name*1="2"; name*0="1"; name*2="3"', (("name", "123"),)),
        # §4 one encoded value: kept encoded under name*
        (
            "a/b; name*=iso-8859-1'fr'r%E9sultat.pdf",
            (("name*", "iso-8859-1'fr'r%E9sultat.pdf"),),
        ),
        # §4.1 encoded segments, then a plain one (percent-encoded where needed)
        (
            "a/b; name*0*=utf-8''%C3%A9tude%20; name*1*=m%C3%A9dicale; name*2=\" (2).txt\"",
            (("name*", "utf-8''%C3%A9tude%20m%C3%A9dicale%20%282%29.txt"),),
        ),
        # ordinary parameters first, then the RFC 2231 ones (Dovecot's order)
        (
            "a/b; filename*=us-ascii''x.pdf; size=12",
            (("size", "12"), ("filename*", "us-ascii''x.pdf")),
        ),
        # a value that does not start at segment 0, or with a gap, is cut there
        ('a/b; name*1="x"', ()),
        ('a/b; name*0="a"; name*2="c"', (("name", "a"),)),
    ],
)
def test_continuations_are_joined(value: str, params: tuple[tuple[str, str], ...]) -> None:
    parsed = parse_content_type(value)
    assert parsed is not None
    assert parsed[2] == params


@pytest.mark.parametrize(
    ("value", "decoded"),
    [("us-ascii''xyz%20123", b"xyz 123"), ("utf-8'fr'%C3%A9t%C3%A9", "été".encode()), ("x", b"x")],
)
def test_rfc2231_decode(value: str, decoded: bytes) -> None:
    assert rfc2231_decode(value) == decoded


def _message(head: str, body: str = "body\r\n") -> bytes:
    return (head.replace("\n", "\r\n") + "\r\n" + body).encode()


def test_boundary_in_rfc2231_form_splits_the_multipart() -> None:
    for ctype in (
        'multipart/mixed; boundary*0="part-"; boundary*1="one"',
        "multipart/mixed; boundary*=us-ascii''part-one",
    ):
        raw = _message(
            f"Content-Type: {ctype}\n",
            "--part-one\r\n\r\nfirst\r\n--part-one\r\n\r\nsecond\r\n--part-one--\r\n",
        )
        body = analyse(raw).body
        assert [raw[p.body_start : p.end] for p in body.parts] == [b"first", b"second"]


def test_repeated_address_fields_merge_and_others_take_the_last() -> None:
    raw = _message(
        "From: a@x\nTo: first@x\nCc: c1@x\nSubject: one\nTo: second@x, third@x\n"
        "Cc: c2@x\nSubject: two\nContent-Type: text/html\nContent-Type: text/plain\n"
    )
    meta = analyse(raw)
    assert meta.envelope.to == "first@x, second@x, third@x"
    assert meta.envelope.cc == "c1@x, c2@x"
    assert meta.envelope.subject == "two"
    assert meta.search.subject == "one\ntwo"  # SEARCH SUBJECT looks into both
    assert meta.body.subtype == "html"  # MIME fields: the first one
    assert analyse(_message("To: a@x\nTo:\n")).envelope.to == "a@x"


@pytest.mark.parametrize(
    ("body", "lines"),
    [("a\r\nb\r\n", 2), ("a\r\nb", 1), ("", 0), ("\r\n", 1)],
)
def test_lines_count_line_ends(body: str, lines: int) -> None:
    assert analyse(_message("Subject: x\n", body)).body.lines == lines
