"""IMAP views: ENVELOPE, BODY/BODYSTRUCTURE, sections, partials, BINARY, SEARCH."""

from __future__ import annotations

import email
import email.policy

import pytest

from relay.message.analysis import analyse
from relay.message.imapview import (
    SectionSpecError,
    binary_section,
    bodystructure,
    envelope,
    find_part,
    nstring,
    parse_addresses,
    part_exists,
    partial,
    quote,
    search_header,
    search_text,
    section,
)
from tests.message.test_analysis import (
    MSG_LETTER,
    MSG_MIXED,
    MSG_NESTED,
    MSG_SIMPLE,
    PDF,
    SAMPLES,
    crlf,
    email_leaves,
    leaves,
    xdm_zip,
)

# ------------------------------------------------------------------------- ENVELOPE


def test_envelope_rfc3501_example() -> None:
    # RFC 3501 §7.4.2 / §8 example, Sender and Reply-To filled from From.
    assert envelope(analyse(MSG_SIMPLE)) == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
        b'NIL NIL "<B27397-0100000@cac.washington.edu>")'
    )


def test_envelope_with_group_and_missing_fields() -> None:
    assert envelope(analyse(MSG_NESTED)) == (
        b'("Tue, 3 Mar 2026 10:00:00 +0000" "Fwd: test" '
        b'(("Secretariat" NIL "secretariat" "cpts.mssante.fr")) '
        b'(("Secretariat" NIL "secretariat" "cpts.mssante.fr")) '
        b'(("Secretariat" NIL "secretariat" "cpts.mssante.fr")) '
        b'((NIL NIL "Equipe" NIL)(NIL NIL "a" "x.example")(NIL NIL "b" "x.example")'
        b'(NIL NIL NIL NIL)(NIL NIL "c" "y.example")) NIL NIL NIL NIL)'
    )


def test_envelope_of_headerless_message() -> None:
    assert envelope(analyse(b"\r\nbody")) == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_envelope_explicit_sender_reply_to_and_8bit() -> None:
    raw = crlf(
        """From: a@x.example
Sender: s@x.example
Reply-To:
Subject: Résultat
In-Reply-To: <p@x>

"""
    )
    env = envelope(analyse(raw))
    assert env == (
        b'(NIL {9}\r\nR\xc3\xa9sultat ((NIL NIL "a" "x.example")) ((NIL NIL "s" "x.example")) '
        b'((NIL NIL "a" "x.example")) NIL NIL NIL "<p@x>" NIL)'
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"Martin, Jean" <jm@x.fr>', [("Martin, Jean", None, "jm", "x.fr")]),
        ("jm@x.fr (Jean Martin)", [("Jean Martin", None, "jm", "x.fr")]),
        ("John Q. Public <jqp@x.fr>", [("John Q. Public", None, "jqp", "x.fr")]),
        ("<@a.example,@b.example:jm@x.fr>", [(None, "@a.example,@b.example", "jm", "x.fr")]),
        # the quoted local part without its quotes, as Dovecot gives it
        ('"john doe"@x.fr', [(None, None, "john doe", "x.fr")]),
        ("jm@[192.0.2.1]", [(None, None, "jm", "[192.0.2.1]")]),
        (
            "=?utf-8?q?J=C3=A9r=C3=B4me?= <j@x.fr>",
            [("=?utf-8?q?J=C3=A9r=C3=B4me?=", None, "j", "x.fr")],
        ),
        (
            "undisclosed-recipients:;",
            [(None, None, "undisclosed-recipients", None), (None, None, None, None)],
        ),
        (
            "G: a@x, B <b@y>; c@z",
            [
                (None, None, "G", None),
                (None, None, "a", "x"),
                ("B", None, "b", "y"),
                (None, None, None, None),
                (None, None, "c", "z"),
            ],
        ),
        ("G: a@x", [(None, None, "G", None), (None, None, "a", "x"), (None, None, None, None)]),
        ("a@x,, ,b@y", [(None, None, "a", "x"), (None, None, "b", "y")]),
        ("garbage", [(None, None, "garbage", "")]),
        ("<>", []),
        ("", []),
        ('"unterminated <a@x>', [(None, None, "unterminated <a@x>", "")]),
    ],
)
def test_parse_addresses(value: str, expected: list[tuple[str | None, ...]]) -> None:
    assert parse_addresses(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", b'"plain"'),
        ('say "hi" \\o/', b'"say \\"hi\\" \\\\o/"'),
        ("", b'""'),
        ("Résumé", b"{8}\r\nR\xc3\xa9sum\xc3\xa9"),
        ("two\r\nlines", b"{10}\r\ntwo\r\nlines"),
    ],
)
def test_quote(value: str, expected: bytes) -> None:
    assert quote(value) == expected


def test_nstring_nil() -> None:
    assert nstring(None) == b"NIL"


# --------------------------------------------------------------- BODY/BODYSTRUCTURE


def test_bodystructure_simple_matches_rfc3501_shape() -> None:
    meta = analyse(MSG_SIMPLE)
    assert (
        bodystructure(meta, False) == b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 55 1)'
    )
    assert bodystructure(meta, True) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 55 1 NIL NIL NIL NIL)'
    )


def test_bodystructure_mixed_letter() -> None:
    meta = analyse(MSG_MIXED)
    assert bodystructure(meta, True) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "UTF-8") NIL NIL "QUOTED-PRINTABLE" 41 0 NIL NIL NIL NIL)'
        b'("APPLICATION" "PDF" ("NAME" "CR.pdf") NIL NIL "BASE64" 28 NIL'
        b' ("ATTACHMENT" ("FILENAME" "CR.pdf")) NIL NIL)'
        b'("APPLICATION" "ZIP" ("NAME" "IHE_XDM.ZIP") NIL NIL "BASE64" 16 NIL'
        b' ("ATTACHMENT" ("FILENAME" "IHE_XDM.ZIP")) NIL NIL)'
        b' "MIXED" ("BOUNDARY" "----=_Part_0") NIL NIL NIL)'
    )
    assert bodystructure(meta, False) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "UTF-8") NIL NIL "QUOTED-PRINTABLE" 41 0)'
        b'("APPLICATION" "PDF" ("NAME" "CR.pdf") NIL NIL "BASE64" 28)'
        b'("APPLICATION" "ZIP" ("NAME" "IHE_XDM.ZIP") NIL NIL "BASE64" 16) "MIXED")'
    )


def test_bodystructure_nested_alternative_and_attached_message() -> None:
    meta = analyse(MSG_NESTED)
    inner_env = (
        b'(NIL "inner" ((NIL NIL "a" "x.example")) ((NIL NIL "a" "x.example")) '
        b'((NIL NIL "a" "x.example")) NIL NIL NIL NIL NIL)'
    )
    assert bodystructure(meta, False) == (
        b'((("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 5 0)'
        b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 11 0) "ALTERNATIVE")'
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 55 ' + inner_env + b" "
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 18 1) 4) "MIXED")'
    )
    assert bodystructure(meta, True) == (
        b'((("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 5 0 NIL NIL NIL NIL)'
        b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 11 0 NIL NIL NIL NIL)'
        b' "ALTERNATIVE" ("BOUNDARY" "inner") NIL NIL NIL)'
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 55 ' + inner_env + b" "
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 18 1 NIL NIL NIL NIL) 4'
        b' NIL ("INLINE" NIL) NIL NIL) "MIXED" ("BOUNDARY" "outer") NIL NIL NIL)'
    )


def test_bodystructure_extension_fields() -> None:
    meta = analyse(MSG_LETTER)
    zipped = bodystructure(meta, True).split(b'("APPLICATION" "ZIP"')[1]
    assert zipped.endswith(
        b'("ATTACHMENT" ("FILENAME" "IHE_XDM.ZIP")) ("fr" "en") "http://example.invalid/IHE_XDM.ZIP")'
        b' "MIXED" ("BOUNDARY" "b1_letter") NIL NIL NIL)'
    )
    assert b'"IHE XDM" "BASE64"' in zipped
    # RFC 2231 parameter passed through raw.
    assert b'("ATTACHMENT" ("FILENAME*" "utf-8\'\'CR%20consultation.pdf"))' in bodystructure(
        meta, True
    )


def test_bodystructure_sizes_agree_with_python_email() -> None:
    for raw in SAMPLES.values():
        meta = analyse(raw)
        theirs = email_leaves(email.message_from_bytes(raw, policy=email.policy.compat32))
        for path, part in leaves(meta).items():
            if part.message is None:
                payload = theirs[path].get_payload()
                assert isinstance(payload, str)
                assert part.size == len(payload.encode("ascii", "surrogateescape"))


# --------------------------------------------------------------------------- sections


@pytest.mark.parametrize(
    ("part", "kind", "fields", "expected"),
    [
        ((1, 1), "", (), b"plain"),
        ((1, 2), "", (), b"<p>html</p>"),
        ((1, 2), "MIME", (), b"Content-Type: text/html; charset=utf-8\r\n\r\n"),
        ((2,), "", (), b"From: a@x.example\r\nSubject: inner\r\n\r\ninner body\r\nline 2"),
        ((2,), "HEADER", (), b"From: a@x.example\r\nSubject: inner\r\n\r\n"),
        ((2,), "TEXT", (), b"inner body\r\nline 2"),
        ((2,), "MIME", (), b"Content-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n"),
        ((2, 1), "", (), b"inner body\r\nline 2"),
        ((2,), "HEADER.FIELDS", ("SUBJECT",), b"Subject: inner\r\n\r\n"),
        ((2,), "HEADER.FIELDS.NOT", ("subject",), b"From: a@x.example\r\n\r\n"),
        ((2,), "HEADER.FIELDS", ("X-NONE",), b"\r\n"),
        ((), "HEADER.FIELDS", ("To", "subject"), None),
        ((1, 1), "HEADER", (), b""),  # HEADER only applies to a message
        ((1, 1), "TEXT", (), b""),
        ((3,), "", (), b""),
        ((1, 3), "", (), b""),
        ((2, 2), "", (), b""),
        ((0,), "", (), b""),
        ((), "MIME", (), b""),
    ],
)
def test_sections_of_nested(
    part: tuple[int, ...], kind: str, fields: tuple[str, ...], expected: bytes | None
) -> None:
    meta = analyse(MSG_NESTED)
    if expected is None:
        expected = (
            b"To: Equipe: a@x.example, b@x.example;, c@y.example\r\nSubject: Fwd: test\r\n\r\n"
        )
    assert section(MSG_NESTED, meta, part, kind, fields) == expected


def test_header_fields_keep_folding_and_order() -> None:
    meta = analyse(MSG_SIMPLE)
    got = section(MSG_SIMPLE, meta, (), "header.fields", ("CC", "Date"))
    assert got == (
        b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"
        b"cc: minutes@CNRI.Reston.VA.US,\r\n John Klensin <KLENSIN@MIT.EDU>\r\n\r\n"
    )


def test_whole_message_sections() -> None:
    meta = analyse(MSG_SIMPLE)
    header = section(MSG_SIMPLE, meta, (), "HEADER")
    body = section(MSG_SIMPLE, meta, (), "TEXT")
    assert header + body == MSG_SIMPLE == section(MSG_SIMPLE, meta, ())
    assert header.endswith(b"\r\n\r\n")
    # Part 1 of a non-multipart message is its body; its MIME header is the message's.
    assert section(MSG_SIMPLE, meta, (1,)) == body
    assert section(MSG_SIMPLE, meta, (1,), "MIME") == header
    assert section(MSG_SIMPLE, meta, (2,)) == b""
    assert not part_exists(meta, (2,))
    assert part_exists(meta, (1,))
    assert find_part(meta, ()) is meta.body


def test_multipart_part_section_is_its_body() -> None:
    meta = analyse(MSG_NESTED)
    got = section(MSG_NESTED, meta, (1,))
    assert got.startswith(b"--inner\r\nContent-Type: text/plain")
    assert got.endswith(b"--inner--\r\n")


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sections_agree_with_python_email(name: str) -> None:
    raw = SAMPLES[name]
    meta = analyse(raw)
    theirs = email_leaves(email.message_from_bytes(raw, policy=email.policy.compat32))
    for path, other in theirs.items():
        if other.get_content_type() == "message/rfc822":
            continue
        payload = other.get_payload()
        assert isinstance(payload, str)
        assert section(raw, meta, path) == payload.encode("ascii", "surrogateescape")
        assert binary_section(raw, meta, path) == other.get_payload(decode=True)


def test_unknown_section_kind() -> None:
    with pytest.raises(SectionSpecError):
        section(MSG_SIMPLE, analyse(MSG_SIMPLE), (), "BOGUS")


def test_bare_lf_header_fields() -> None:
    raw = MSG_NESTED.replace(b"\r\n", b"\n")
    meta = analyse(raw)
    assert section(raw, meta, (2,), "HEADER.FIELDS", ("from",)) == b"From: a@x.example\n\n"
    assert section(raw, meta, (2,), "HEADER") == b"From: a@x.example\nSubject: inner\n\n"


def test_header_only_entity_gets_a_blank_line() -> None:
    raw = b"Subject: only\r\n"
    assert section(raw, analyse(raw), (), "HEADER.FIELDS", ("subject",)) == raw + b"\r\n"


# --------------------------------------------------------------------------- partial


@pytest.mark.parametrize(
    ("start", "length", "expected"),
    [(0, 3, b"012"), (2, 3, b"234"), (8, 10, b"89"), (10, 1, b""), (99, 1, b""), (3, 0, b"")],
)
def test_partial(start: int, length: int, expected: bytes) -> None:
    assert partial(b"0123456789", start, length) == expected


def test_partial_rejects_negative() -> None:
    with pytest.raises(SectionSpecError):
        partial(b"0123", -1, 2)


# ---------------------------------------------------------------------------- BINARY


def test_binary_decodes_letter_attachments() -> None:
    meta = analyse(MSG_LETTER)
    assert binary_section(MSG_LETTER, meta, (2,)) == PDF
    assert binary_section(MSG_LETTER, meta, (3,)) == xdm_zip()
    text = binary_section(MSG_LETTER, meta, (1, 1))
    assert text is not None
    assert text.startswith(b"Le patient pr\xe9sente une fi\xe8vre \xe0 39\xb0C")
    assert b"compte rendu" in text  # soft line break removed
    assert (
        binary_section(MSG_LETTER, meta, (1, 2))
        == "<p>Le patient présente une fièvre.</p>".encode()
    )
    assert binary_section(MSG_LETTER, meta, ()) == MSG_LETTER
    assert binary_section(MSG_LETTER, meta, (9,)) == b""


def test_binary_unknown_encoding_is_none() -> None:
    raw = crlf(
        """Content-Type: application/octet-stream
Content-Transfer-Encoding: x-uuencode

begin 644 a
end
"""
    )
    assert binary_section(raw, analyse(raw), (1,)) is None


def test_binary_of_7bit_and_multipart_is_raw() -> None:
    meta = analyse(MSG_NESTED)
    assert binary_section(MSG_NESTED, meta, (1, 1)) == b"plain"
    assert binary_section(MSG_NESTED, meta, (1,)) == section(MSG_NESTED, meta, (1,))
    assert binary_section(MSG_NESTED, meta, (2,)) == section(MSG_NESTED, meta, (2,))


def test_binary_tolerates_broken_base64() -> None:
    raw = b"Content-Transfer-Encoding: base64\r\n\r\nY2Fm!!w6k\r\n=junk"
    assert binary_section(raw, analyse(raw), (1,)) == b"caf\xc3\xa9"


# ----------------------------------------------------------------------------- SEARCH


@pytest.mark.parametrize(
    ("needle", "where", "found"),
    [
        ("présente", "BODY", True),  # quoted-printable latin-1 body
        ("PRÉSENTE UNE FIÈVRE", "BODY", True),
        ("39°C", "BODY", True),
        ("compte rendu ci-joint", "BODY", True),  # across a soft line break
        ("fièvre.</p>", "BODY", True),  # base64 UTF-8 html part
        ("absent", "BODY", False),
        ("JVBERi0", "BODY", False),  # base64 of an attachment is not text
        ("résultats d'analyse", "BODY", False),  # a header is not in the body
        ("résultats d'analyse", "TEXT", True),
        ("x-mss-ins: o", "TEXT", True),
        ("présente", "TEXT", True),
        ("", "BODY", True),
    ],
)
def test_search_letter(needle: str, where: str, found: bool) -> None:
    assert search_text(MSG_LETTER, analyse(MSG_LETTER), needle, where) is found


def test_search_text_decodes_encoded_words_and_attached_message() -> None:
    raw = b"Subject: =?UTF-8?Q?Lettre_de_liaison_=C3=A0_J=C3=A9r=C3=B4me?=\r\n\r\nBonjour\r\n"
    meta = analyse(raw)
    assert search_text(raw, meta, "liaison à jérôme", "TEXT")
    assert not search_text(raw, meta, "liaison à jérôme", "BODY")
    assert search_text(raw, meta, "bonjour", "BODY")
    mixed = analyse(MSG_MIXED)
    assert search_text(MSG_MIXED, mixed, "rendu opératoire.", "BODY")  # QP UTF-8 body
    nested = analyse(MSG_NESTED)
    assert search_text(MSG_NESTED, nested, "subject: inner", "BODY")
    assert search_text(MSG_NESTED, nested, "LINE 2", "BODY")
    assert search_text(MSG_NESTED, nested, "<p>html", "BODY")


def test_search_windows_1252() -> None:
    raw = b"Content-Type: text/plain; charset=windows-1252\r\n\r\nl\x92\xe9t\xe9 \x80 5"
    meta = analyse(raw)
    assert search_text(raw, meta, "l\u2019été € 5", "BODY")


def test_search_rejects_unknown_key() -> None:
    with pytest.raises(SectionSpecError):
        search_text(MSG_SIMPLE, analyse(MSG_SIMPLE), "x", "SUBJECT")


@pytest.mark.parametrize(
    ("field", "needle", "found"),
    [
        ("subject", "OPÉRATOIRE", True),
        ("X-MSS-INS", "o", True),
        ("x-mss-ins", "", True),
        ("x-mss-nil", "", False),
        ("to", "secretariat@", True),
        ("to", "nobody", False),
    ],
)
def test_search_header(field: str, needle: str, found: bool) -> None:
    assert search_header(MSG_MIXED, analyse(MSG_MIXED), field, needle) is found


def test_encoded_attached_message_is_served_as_octet_stream() -> None:
    raw = crlf(
        """Content-Type: multipart/mixed; boundary=b

--b
Content-Type: message/rfc822
Content-Transfer-Encoding: base64

U3ViamVjdDogeA0KDQp5
--b--
"""
    )
    meta = analyse(raw)
    assert bodystructure(meta, False) == (
        b'(("APPLICATION" "OCTET-STREAM" NIL NIL NIL "BASE64" 20) "MIXED")'
    )
    assert binary_section(raw, meta, (1,)) == b"Subject: x\r\n\r\ny"
    assert section(raw, meta, (1,), "HEADER") == b""
