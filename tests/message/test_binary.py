"""Binary parts from APPEND ~{n} stored base64 (RFC 3516 §4.4), and quoted-printable
decoding for BINARY[] (RFC 2045 §6.7): table-driven."""

from __future__ import annotations

import pytest

from relay.message.analysis import analyse
from relay.message.binary import encode_binary_parts
from relay.message.imapview import binary_section, decode_qp, section


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        (b"hello  \r\n", b"hello\r\n"),  # trailing white space dropped
        (b"bar=\r\n\r\n", b"bar\r\n"),  # soft line break
        (b"foo\t \t= \r\n=62\r\n", b"foo\t \tb\r\n"),  # "=" then white space: still soft
        (b"a=3Db=3d\r\n", b"a=b=\r\n"),  # both cases of hex
        (b"50% =ZZ off", b"50% =ZZ off"),  # a bad escape is kept
        (b"no final line end", b"no final line end"),
        (b"bare\nlf\n", b"bare\nlf\n"),  # line ends kept as they came
        (b"", b""),
    ],
)
def test_decode_qp(encoded: bytes, decoded: bytes) -> None:
    assert decode_qp(encoded) == decoded


BINARY = b"\x00-\xe4\n\r\n\n"


@pytest.mark.parametrize(
    "raw",
    [
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        + BINARY,
        b"Content-Type: application/octet-stream\r\n\r\n" + BINARY,  # NUL, no CTE header
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n"
        b"Content-Type: a/b\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + BINARY + b"\r\n"
        b"--x\r\n\r\ntext\r\n--x--\r\n",
    ],
)
def test_binary_parts_become_base64_and_decode_back(raw: bytes) -> None:
    meta = analyse(raw)
    part = (1,)
    original = binary_section(raw, meta, part)
    stored = encode_binary_parts(raw, meta)
    assert b"\x00" not in stored
    again = analyse(stored)
    assert binary_section(stored, again, part) == original == BINARY
    assert b"\x00" not in section(stored, again, (), "", ())


def test_text_is_left_alone() -> None:
    raw = b"Subject: x\r\nContent-Transfer-Encoding: 8bit\r\n\r\ncaf\xc3\xa9\r\n"
    assert encode_binary_parts(raw, analyse(raw)) is raw
