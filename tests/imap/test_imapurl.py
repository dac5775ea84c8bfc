"""IMAP URLs as CATENATE names message parts (RFC 5092, RFC 4469 §3): table-driven."""

from __future__ import annotations

import pytest

from relay.imap.imapurl import MessageUrl, parse_message_url, parse_section


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/INBOX/;UID=3", MessageUrl("INBOX", 3)),
        (
            "/imaptest;uidvalidity=12345/;uid=3/;section=header",
            MessageUrl("imaptest", 3, 12345, "HEADER"),
        ),
        (
            "/Partages/s@x.fr/INBOX/;uid=2/;section=1.MIME",
            MessageUrl("Partages/s@x.fr/INBOX", 2, None, "1.MIME"),
        ),
        ("/a%20b/;uid=2/;partial=100000.1", MessageUrl("a b", 2, None, "", (100000, 1))),
        ("/a/;uid=2/;partial=5", MessageUrl("a", 2, None, "", (5, None))),
        ("imap://bob;AUTH=*@host:143/INBOX/;uid=9", MessageUrl("INBOX", 9)),
        ("/a/;section=1/;uid=2", None),  # parameters out of order
        ("/a/;uid=2/;uid=3", None),  # twice
        ("/a", None),  # no message
        ("/a/;uid=0", None),
        ("/a/;uid=99999999999", None),
        ("/a/;uid=1/;partial=x", None),
        ("/;uid=1", None),
        ("", None),
    ],
)
def test_parse_message_url(url: str, expected: MessageUrl | None) -> None:
    assert parse_message_url(url) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ((), "", ())),
        ("HEADER", ((), "HEADER", ())),
        ("1.2", ((1, 2), "", ())),
        ("2.MIME", ((2,), "MIME", ())),
        ("HEADER.FIELDS (From To)", ((), "HEADER.FIELDS", ("FROM", "TO"))),
        ("1.HEADER.FIELDS.NOT (X)", ((1,), "HEADER.FIELDS.NOT", ("X",))),
        ("MIME", None),
        ("HEADER.FIELDS ()", None),
        ("1.", None),
        ("0", None),
        ("BODY", None),
    ],
)
def test_parse_section(text: str, expected: object) -> None:
    assert parse_section(text) == expected
