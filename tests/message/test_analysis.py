"""analyse(): body structure, offsets, envelope values, search values, JSON round trip.

The sample messages here are also used by test_imapview.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import io
import json
import zipfile
from email.message import Message

import pytest

from relay.message.analysis import (
    BodyPart,
    MessageMeta,
    MetaFormatError,
    analyse,
    decode_charset,
    decode_words,
    normalise_message_id,
    parse_date,
    split_multipart,
)


def crlf(text: str) -> bytes:
    """A message written with \\n in the test source, stored with CRLF as the store does."""
    return text.replace("\n", "\r\n").encode("utf-8")


# RFC 3501 §7.4.2 ENVELOPE example message.
MSG_SIMPLE = crlf(
    """Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)
From: Terry Gray <gray@cac.washington.edu>
Subject: IMAP4rev1 WG mtg summary and minutes
To: imap@cac.washington.edu
cc: minutes@CNRI.Reston.VA.US,
 John Klensin <KLENSIN@MIT.EDU>
Message-Id: <B27397-0100000@cac.washington.edu>
MIME-Version: 1.0
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII

Hello Joe, do you think we can meet at 3:30 tomorrow?
"""
)

# An MSSanté letter: text, a PDF and the IHE_XDM.ZIP (tiny payloads, hand-countable).
MSG_MIXED = crlf(
    """From: "Dr. Martin, Jean" <jean.martin@hopital.mssante.fr>
To: secretariat@cpts.mssante.fr
Subject: =?UTF-8?Q?Compte_rendu_op=C3=A9ratoire?=
Date: Mon, 02 Mar 2026 09:15:00 +0100
Message-ID: <cr-42@hopital.mssante.fr>
MIME-Version: 1.0
X-MSS-INS: O
Content-Type: multipart/mixed; boundary="----=_Part_0"

This is a multi-part message in MIME format.
------=_Part_0
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: quoted-printable

Ci-joint le compte rendu op=C3=A9ratoire.
------=_Part_0
Content-Type: application/pdf; name="CR.pdf"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="CR.pdf"

JVBERi0xLjQKJcOkw7zDtsOfCg==
------=_Part_0
Content-Type: application/zip; name=IHE_XDM.ZIP
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename=IHE_XDM.ZIP

UEsDBAoAAAAAAA==
------=_Part_0--
"""
)

# multipart/alternative nested in mixed, an attached message, a group address.
MSG_NESTED = crlf(
    """From: Secretariat <secretariat@cpts.mssante.fr>
To: Equipe: a@x.example, b@x.example;, c@y.example
Subject: Fwd: test
Date: Tue, 3 Mar 2026 10:00:00 +0000
Content-Type: multipart/mixed; boundary=outer

--outer
Content-Type: multipart/alternative; boundary=inner

--inner
Content-Type: text/plain

plain
--inner
Content-Type: text/html; charset=utf-8

<p>html</p>
--inner--

--outer
Content-Type: message/rfc822
Content-Disposition: inline

From: a@x.example
Subject: inner

inner body
line 2
--outer--
"""
)


def xdm_zip() -> bytes:
    """A real IHE_XDM.ZIP (stored, fixed dates: the same bytes on every run)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in (
            ("IHE_XDM/SUBSET01/METADATA.XML", b'<rim:SubmitObjectsRequest patientId="x"/>'),
            ("IHE_XDM/SUBSET01/DOC0001.XML", b"<ClinicalDocument/>" * 50),
            ("INDEX.HTM", b"<html>index</html>"),
        ):
            zf.writestr(zipfile.ZipInfo(name, date_time=(2026, 3, 2, 9, 15, 0)), data)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii")


PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + bytes(range(256)) * 4 + b"\n%%EOF\n"

# The realistic letter: real base64 payloads, an 8-bit UTF-8 header, X-MSS headers.
MSG_LETTER = crlf(
    f"""Return-Path: <jean.martin@hopital.mssante.fr>
From: Jean Martin <jean.martin@hopital.mssante.fr>
To: Secrétariat CPTS <secretariat@cpts.mssante.fr>
Cc: 279035121518989@patient.mssante.fr
Subject: Résultats d'analyse
Date: Mon, 02 Mar 2026 23:30:00 -0500
Message-ID: <letter-1@hopital.mssante.fr>
MIME-Version: 1.0
X-MSS-INS: O
X-MSS-CODECDA: 11488-4
Content-Type: multipart/mixed;
 boundary="b1_letter"

--b1_letter
Content-Type: multipart/alternative; boundary="b2_alt"

--b2_alt
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

Le patient pr=E9sente une fi=E8vre =E0 39=B0C depuis hier, voir le compte =
rendu ci-joint.
--b2_alt
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: base64

{_b64("<p>Le patient présente une fièvre.</p>".encode())}
--b2_alt--

--b1_letter
Content-Type: application/pdf; name="CR_consultation.pdf"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename*=utf-8''CR%20consultation.pdf

{_b64(PDF)}
--b1_letter
Content-Type: application/zip; name="IHE_XDM.ZIP"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="IHE_XDM.ZIP"
Content-Description: IHE XDM
Content-Language: fr, en
Content-Location: http://example.invalid/
 IHE_XDM.ZIP

{_b64(xdm_zip())}
--b1_letter--
"""
)

SAMPLES = {
    "simple": MSG_SIMPLE,
    "mixed": MSG_MIXED,
    "nested": MSG_NESTED,
    "letter": MSG_LETTER,
}


def email_leaves(msg: Message) -> dict[tuple[int, ...], Message]:
    """The leaf entities (and message/rfc822 parts) by IMAP part number, as Python's
    email package sees them (RFC 3501 §6.4.5 numbering)."""
    out: dict[tuple[int, ...], Message] = {}

    def walk(m: Message, prefix: tuple[int, ...]) -> None:
        if m.is_multipart() and m.get_content_type() != "message/rfc822":
            for i, sub in enumerate(m.get_payload(), 1):
                assert isinstance(sub, Message)
                visit(sub, (*prefix, i))
        else:
            visit(m, (*prefix, 1))  # part 1 of a non-multipart message is its body

    def visit(m: Message, path: tuple[int, ...]) -> None:
        if m.get_content_type() == "message/rfc822":
            out[path] = m
            inner = m.get_payload()
            assert isinstance(inner, list)
            assert isinstance(inner[0], Message)
            walk(inner[0], path)
        elif m.is_multipart():
            walk(m, path)
        else:
            out[path] = m

    walk(msg, ())
    return out


def leaves(meta: MessageMeta) -> dict[tuple[int, ...], BodyPart]:
    """Our leaf entities (and message/rfc822 parts) by IMAP part number."""
    out: dict[tuple[int, ...], BodyPart] = {}

    def walk(node: BodyPart, prefix: tuple[int, ...]) -> None:
        if node.parts:
            for i, child in enumerate(node.parts, 1):
                visit(child, (*prefix, i))
        else:
            visit(node, (*prefix, 1))

    def visit(node: BodyPart, path: tuple[int, ...]) -> None:
        if node.parts:
            walk(node, path)
        elif node.message is not None:
            out[path] = node
            walk(node.message, path)
        else:
            out[path] = node

    walk(meta.body, ())
    return out


# ------------------------------------------------------------------------ structure


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("simple", [((1,), "text/plain", 55, 1)]),
        # lines count CRLFs (RFC 5322 §2.1 lines; Dovecot counts the same): a part's
        # last CRLF belongs to the boundary (RFC 2046 §5.1.1)
        (
            "mixed",
            [
                ((1,), "text/plain", 41, 0),
                ((2,), "application/pdf", 28, 0),
                ((3,), "application/zip", 16, 0),
            ],
        ),
        (
            "nested",
            [
                ((1, 1), "text/plain", 5, 0),
                ((1, 2), "text/html", 11, 0),
                ((2,), "message/rfc822", 55, 4),
                ((2, 1), "text/plain", 18, 1),
            ],
        ),
    ],
)
def test_shape(name: str, shape: list[tuple[tuple[int, ...], str, int, int]]) -> None:
    meta = analyse(SAMPLES[name])
    got = [(p, f"{b.type}/{b.subtype}", b.size, b.lines) for p, b in leaves(meta).items()]
    assert got == shape


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_leaves_agree_with_python_email(name: str) -> None:
    raw = SAMPLES[name]
    meta = analyse(raw)
    ours = leaves(meta)
    theirs = email_leaves(email.message_from_bytes(raw, policy=email.policy.compat32))
    assert sorted(ours) == sorted(theirs)
    for path, part in ours.items():
        other = theirs[path]
        assert f"{part.type}/{part.subtype}" == other.get_content_type()
        if part.message is None:
            payload = other.get_payload()
            assert isinstance(payload, str)
            assert raw[part.body_start : part.end] == payload.encode("ascii", "surrogateescape")


def test_offsets_of_simple_message() -> None:
    meta = analyse(MSG_SIMPLE)
    assert meta.size == len(MSG_SIMPLE)
    assert MSG_SIMPLE[meta.header_end - 4 : meta.header_end] == b"\r\n\r\n"
    assert MSG_SIMPLE[meta.header_end :].startswith(b"Hello Joe")
    assert meta.body.header_start == 0
    assert meta.body.end == len(MSG_SIMPLE)


def test_mime_fields_of_letter() -> None:
    meta = analyse(MSG_LETTER)
    pdf, zipped = meta.body.parts[1], meta.body.parts[2]
    assert pdf.params == (("name", "CR_consultation.pdf"),)
    # RFC 2231 parameters stay raw for BODYSTRUCTURE.
    assert pdf.disposition == "attachment"
    assert pdf.disposition_params == (("filename*", "utf-8''CR%20consultation.pdf"),)
    assert zipped.description == "IHE XDM"
    assert zipped.language == ("fr", "en")
    assert zipped.location == "http://example.invalid/IHE_XDM.ZIP"
    assert zipped.encoding == "base64"
    assert meta.body.param("BOUNDARY") == "b1_letter"


def test_bare_lf_input_gives_same_structure() -> None:
    for raw in SAMPLES.values():
        lf = raw.replace(b"\r\n", b"\n")
        a, b = analyse(raw), analyse(lf)
        assert [(p, x.type, x.subtype, x.lines) for p, x in leaves(a).items()] == [
            (p, x.type, x.subtype, x.lines) for p, x in leaves(b).items()
        ]
        for (pa, xa), (pb, xb) in zip(leaves(a).items(), leaves(b).items(), strict=True):
            assert pa == pb
            body_a = raw[xa.body_start : xa.end].replace(b"\r\n", b"\n")
            assert body_a == lf[xb.body_start : xb.end]


@pytest.mark.parametrize(
    ("raw", "ctype", "body"),
    [
        (b"", "text/plain", b""),
        (b"\r\nbody only", "text/plain", b"body only"),
        (b"\nbody only", "text/plain", b"body only"),
        (b"Subject: no body\r\n", "text/plain", b""),
        (b"Content-Type: text\r\n\r\nx", "text/plain", b"x"),  # invalid type: default
        (b"Content-Type: multipart/mixed\r\n\r\nno boundary", "text/plain", b"no boundary"),
        (b"Content-Type: multipart/mixed; boundary=b\r\n\r\nno parts", "text/plain", b"no parts"),
        (b"Content-Type: Image/PNG; name=a.png\r\n\r\nx", "image/png", b"x"),
        (b"From nobody Mon Jan 1 00:00:00 2026\nSubject: mbox\n\nx", "text/plain", b"x"),
    ],
)
def test_degenerate_messages(raw: bytes, ctype: str, body: bytes) -> None:
    meta = analyse(raw)
    assert f"{meta.body.type}/{meta.body.subtype}" == ctype
    assert raw[meta.body.body_start : meta.body.end] == body
    assert not meta.body.parts


def test_missing_headers() -> None:
    meta = analyse(b"\r\nhello\r\n")
    assert meta.envelope.from_ is None
    assert meta.envelope.subject is None
    assert meta.message_id is None
    assert meta.search.subject == ""
    assert meta.search.sent is None
    assert meta.body.params == (("charset", "US-ASCII"),)
    assert meta.body.lines == 1


def test_unclosed_multipart_runs_to_end() -> None:
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\none\r\n--b\r\n\r\ntwo"
    meta = analyse(raw)
    bodies = [raw[p.body_start : p.end] for p in meta.body.parts]
    assert bodies == [b"one", b"two"]


def test_boundary_needs_line_start_and_line_end() -> None:
    body = b"--b\r\n\r\none --b\r\n--bx\r\n--b  \r\n\r\ntwo\r\n--b--junk\r\n--b--\r\nepilogue"
    spans = split_multipart(body, 0, len(body), b"b")
    assert [body[s:e] for s, e in spans] == [b"\r\none --b\r\n--bx", b"\r\ntwo\r\n--b--junk"]


def test_multipart_digest_defaults_to_message() -> None:
    raw = crlf(
        """Content-Type: multipart/digest; boundary=d

--d

Subject: one

1
--d--
"""
    )
    part = analyse(raw).body.parts[0]
    assert (part.type, part.subtype) == ("message", "rfc822")
    assert part.envelope is not None
    assert part.envelope.subject == "one"


def test_nesting_is_bounded() -> None:
    depth = 200
    raw = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(depth)
    )
    meta = analyse(raw + b"\r\nleaf")
    levels = 0
    node = meta.body
    while node.parts:
        node = node.parts[0]
        levels += 1
    assert 0 < levels <= 32


def test_part_count_is_bounded() -> None:
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * 5000
    meta = analyse(raw)
    assert len(meta.body.parts) == 2000
    assert meta.body.parts[-1].end == len(raw)


# --------------------------------------------------------------- envelope and search


def test_envelope_values_are_raw_and_unfolded() -> None:
    env = analyse(MSG_SIMPLE).envelope
    assert env.cc == "minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>"
    assert env.date == "Wed, 17 Jul 1996 02:23:25 -0700 (PDT)"
    assert env.message_id == "<B27397-0100000@cac.washington.edu>"
    assert env.sender is None
    mixed = analyse(MSG_MIXED).envelope
    assert mixed.subject == "=?UTF-8?Q?Compte_rendu_op=C3=A9ratoire?="


def test_search_headers_are_decoded() -> None:
    meta = analyse(MSG_MIXED)
    assert meta.search.subject == "Compte rendu opératoire"
    assert meta.search.from_ == '"Dr. Martin, Jean" <jean.martin@hopital.mssante.fr>'
    assert meta.search.sent == dt.date(2026, 3, 2)
    assert meta.message_id == "cr-42@hopital.mssante.fr"
    letter = analyse(MSG_LETTER)
    # 8-bit UTF-8 headers (RFC 6532) are read as UTF-8.
    assert letter.search.subject == "Résultats d'analyse"
    assert letter.search.to == "Secrétariat CPTS <secretariat@cpts.mssante.fr>"
    # SENTON uses the date in the header's own zone (RFC 3501 §6.4.4), not UTC.
    assert letter.search.sent == dt.date(2026, 3, 2)


def test_latin1_8bit_header_falls_back() -> None:
    meta = analyse(b"Subject: caf\xe9\r\n\r\n")
    assert meta.search.subject == "café"


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("plain", "plain"),
        ("=?utf-8?q?caf=C3=A9?=", "café"),
        ("=?UTF-8?B?Y2Fmw6k=?=", "café"),
        ("x =?iso-8859-1?q?caf=E9?= y", "x café y"),
        ("=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),  # RFC 2047 §6.2: space between words dropped
        ("=?utf-8?q?a?=\r\n =?utf-8?q?b?=", "ab"),
        ("=?utf-8?q?a_b?= c", "a b c"),
        ("=?utf-8*fr?q?caf=C3=A9?=", "café"),  # RFC 2231 §5 language
        ("=?windows-1252?q?=93quoted=94?=", "\u201cquoted\u201d"),
        ("=?iso-8859-15?q?=A4?=", "€"),
        ("=?x-unknown?q?abc?=", "abc"),
        ("=?utf-8?b?not base64?=", "=?utf-8?b?not base64?="),
        ("=?utf-8?b?Y2Fm?=", "caf"),
        ("=?utf-8?b?Y2Fmw6?=", "caf\ufffd"),  # bad padding is tolerated
    ],
)
def test_decode_words(raw: str, decoded: str) -> None:
    assert decode_words(raw) == decoded


@pytest.mark.parametrize(
    ("data", "charset", "decoded"),
    [
        (b"caf\xc3\xa9", "utf-8", "café"),
        (b"caf\xc3\xa9", None, "café"),
        (b"caf\xe9", "us-ascii", "café"),
        (b"caf\xe9", "ISO-8859-1", "café"),
        (b"\x80", "iso-8859-15", "\x80"),
        (b"\xa4", "iso-8859-15", "€"),
        (b"\x92", "windows-1252", "\u2019"),
        (b"abc", "base64", "abc"),  # not a text codec: falls back
        (b"abc", "no-such-charset", "abc"),
    ],
)
def test_decode_charset(data: bytes, charset: str | None, decoded: str) -> None:
    assert decode_charset(data, charset) == decoded


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<a@b>", "a@b"),
        (" <a @b> (comment)", "a@b"),
        ("a@b", "a@b"),
        ("", None),
        ("<>", None),
        (None, None),
    ],
)
def test_normalise_message_id(value: str | None, expected: str | None) -> None:
    assert normalise_message_id(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Sun, 22 Nov 2026 05:31:06 +0000", dt.date(2026, 11, 22)),
        ("22 Nov 2026 23:59:59 -1200", dt.date(2026, 11, 22)),
        ("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)", dt.date(1996, 7, 17)),
        ("31 Feb 2026 00:00:00 +0000", None),
        ("yesterday", None),
        ("", None),
    ],
)
def test_parse_date(value: str, expected: dt.date | None) -> None:
    assert parse_date(value) == expected


# ----------------------------------------------------------------------------- JSON


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_json_round_trip(name: str) -> None:
    meta = analyse(SAMPLES[name])
    text = json.dumps(meta.to_json(), separators=(",", ":"))
    assert MessageMeta.from_json(json.loads(text)) == meta
    assert len(text) < 1500


def test_json_stores_decoded_search_values_only_when_they_differ() -> None:
    d = analyse(MSG_MIXED).to_json()
    assert d["s"] == {"subject": "Compte rendu opératoire", "sent": "2026-03-02"}


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {},
        {"v": 2},
        {"v": 1, "z": 1, "h": 0},
        {"v": 1, "z": "1", "h": 0, "b": {"t": "text", "s": "plain", "o": [0, 0, 1]}},
        {"v": 1, "z": 1, "h": 0, "b": {"t": "text", "s": "plain", "o": [0, 0]}},
        {"v": 1, "z": 1, "h": 0, "b": {"t": 1, "s": "plain", "o": [0, 0, 1]}},
        {"v": 1, "z": 1, "h": 0, "b": {"t": "t", "s": "p", "o": [0, 0, 1], "p": [["a"]]}},
        {"v": 1, "z": 1, "h": 0, "b": {"t": "t", "s": "p", "o": [0, 0, 1]}, "s": {"sent": "x"}},
        {"v": 1, "z": True, "h": 0, "b": {"t": "t", "s": "p", "o": [0, 0, 1]}},
    ],
)
def test_from_json_rejects_malformed(bad: object) -> None:
    with pytest.raises(MetaFormatError):
        MessageMeta.from_json(bad)


def test_unclosed_inner_multipart_ends_at_outer_delimiter() -> None:
    # The inner multipart is never closed: its last part is empty and stops where the
    # outer delimiter's CRLF starts.
    raw = crlf(
        """Content-Type: multipart/mixed; boundary=o

--o
Content-Type: multipart/mixed; boundary=i

--i

a
--i
--o--
"""
    )
    inner = analyse(raw).body.parts[0]
    assert [raw[p.body_start : p.end] for p in inner.parts] == [b"a", b""]
