"""The down-sync's reading of FETCH answers as aioimaplib hands them over (pure)."""

from __future__ import annotations

from relay.upstream.sync import fetched_literals, parse_fetched_bodies, parse_fetched_ids

BODY = b"Subject: x\r\n\r\nhi\r\n"


def test_one_literal_per_message_with_the_rest_of_the_response() -> None:
    lines = [
        b"1 FETCH (UID 7 FLAGS (\\Seen) BODY[] {19}",
        bytearray(BODY),
        b' INTERNALDATE "02-Dec-2026 08:00:00 +0000")',
        b"2 FETCH (UID 9 FLAGS () MODSEQ (12) BODY[] {19}",
        bytearray(BODY),
        b")",
        b"Fetch completed.",
    ]
    texts = [text for text, _ in fetched_literals(lines)]
    assert len(texts) == 2 and texts[0].startswith(b"UID 7 FLAGS (\\Seen) BODY[] ")
    assert b'INTERNALDATE "02-Dec-2026 08:00:00 +0000")' in texts[0]  # the rest, after
    got = parse_fetched_bodies(lines)
    assert [(d.remote_uid, d.raw, d.modseq) for d in got] == [(7, BODY, 0), (9, BODY, 12)]
    assert got[0].flags == frozenset({"\\Seen"}) and got[1].flags == frozenset()
    assert got[0].internal_date.isoformat() == "2026-12-02T08:00:00+00:00"


def test_headers_give_message_id_and_size() -> None:
    header = b"Message-ID: <a@b>\r\n\r\n"
    lines = [
        b"1 FETCH (UID 3 FLAGS () RFC822.SIZE 120 BODY[HEADER.FIELDS (MESSAGE-ID)] {21}",
        bytearray(header),
        b")",
        b"2 FETCH (UID 4 RFC822.SIZE 10 BODY[HEADER.FIELDS (MESSAGE-ID)] {2}",
        bytearray(b"\r\n"),
        b")",
    ]
    got = parse_fetched_ids(lines)
    assert [(c.remote_uid, c.message_id, c.size) for c in got] == [(3, "a@b", 120), (4, None, 10)]


def test_lines_without_a_literal_or_a_uid_are_passed_over() -> None:
    assert parse_fetched_bodies([b"* OK still here", b"1 FETCH (FLAGS () BODY[] {2}", b"hi"]) == []
    assert list(fetched_literals([b"1 FETCH (UID 1 BODY[] {2}"])) == []  # literal missing
