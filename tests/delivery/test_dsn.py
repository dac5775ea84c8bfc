"""DSN builder: parsed back with the standard `email` package."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.delivery.dsn import DsnKind, FailedRecipient, build_dsn

NOW = dt.datetime(2025, 6, 2, 10, 0, tzinfo=dt.UTC)
ARRIVED = NOW - dt.timedelta(hours=5)
SECRET = "BODY-SECRET-7f3a: compte rendu, patient 279035121518989, VIH positif"
ORIGINAL = (
    b"From: Dr Anne Martin <anne.martin@cpts.example>\r\n"
    b"To: bob@hop.example, carol@hop.example\r\n"
    b"Subject: =?utf-8?q?R=C3=A9sultats_d=27analyse?=\r\n"
    b"Message-ID: <orig-1@cpts.example>\r\n"
    b"X-MSS-INS: O\r\n"
    b"\r\n" + SECRET.encode() + b"\r\n"
)

BOB = FailedRecipient(
    recipient="bob@hop.example",
    status="5.1.1",
    action="failed",
    diagnostic_code="smtp; 550 5.1.1 <bob@hop.example>: user unknown",
    remote_mta="mx.hop.example",
    last_attempt=NOW - dt.timedelta(minutes=1),
)
CAROL = FailedRecipient(
    recipient="carol@hop.example",
    status="4.4.7",
    action="failed",
    diagnostic_code=None,
    remote_mta=None,
    last_attempt=NOW,
    will_retry_until=NOW,  # not reported for "failed" (RFC 3464 §2.3.9)
)
DAVE_DELAYED = FailedRecipient(
    recipient="dave@hop.example",
    status="4.4.1",
    action="delayed",
    diagnostic_code="smtp; 421 4.4.1 try later",
    remote_mta="mx.hop.example",
    last_attempt=NOW,
    will_retry_until=ARRIVED + dt.timedelta(days=5),
)


def build(
    failed: list[FailedRecipient] | None = None,
    *,
    kind: DsnKind = "failure",
    original: bytes = ORIGINAL,
    sender: str = "anne.martin@cpts.example",
    envid: str | None = "ENV-42",
) -> bytes:
    return build_dsn(
        reporting_mta="relay.cpts.example",
        original_envelope_id=envid,
        original_sender=sender,
        arrival_date=ARRIVED,
        failed=failed if failed is not None else [BOB, CAROL],
        original_headers=original,
        kind=kind,
        now=NOW,
        message_id_domain="cpts.example",
    )


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def parts(message: EmailMessage) -> list[Message]:
    payload = message.get_payload()
    assert isinstance(payload, list)
    return [part for part in payload if isinstance(part, Message)]


def status_blocks(message: EmailMessage) -> list[Message]:
    report = parts(message)[1]
    assert report.get_content_type() == "message/delivery-status"
    blocks = report.get_payload()
    assert isinstance(blocks, list)
    return [block for block in blocks if isinstance(block, Message)]


def text_of(part: Message) -> str:
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data.decode("utf-8")


def assert_wire_format(raw: bytes) -> None:
    """CRLF only, every line ≤ 998 octets (RFC 5322 §2.1.1)."""
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert raw.endswith(b"\r\n")
    assert re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", raw) is None, "control character"
    for line in raw.split(b"\r\n"):
        assert len(line) <= 998


def test_structure() -> None:
    raw = build()
    assert_wire_format(raw)
    assert raw.isascii()
    message = parse(raw)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parts(message)] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert parts(message)[0].get_content_charset() == "utf-8"
    assert not message.defects
    for part in parts(message):
        assert not part.defects


def test_top_level_headers() -> None:
    message = parse(build())
    sender = message["From"]
    assert sender.addresses[0].display_name == "Mail Delivery System"
    assert sender.addresses[0].addr_spec == "MAILER-DAEMON@relay.cpts.example"
    assert message["To"].addresses[0].addr_spec == "anne.martin@cpts.example"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["MIME-Version"] == "1.0"
    assert parsedate_to_datetime(message["Date"]) == NOW
    assert re.fullmatch(r"<[0-9a-f]{32}@cpts\.example>", message["Message-ID"])
    assert message["In-Reply-To"] == "<orig-1@cpts.example>"
    assert message["References"] == "<orig-1@cpts.example>"


def test_message_ids_are_unique() -> None:
    assert parse(build())["Message-ID"] != parse(build())["Message-ID"]


def test_failure_subject_is_bilingual_and_encoded() -> None:
    raw = build()
    subject_lines = raw.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert any(line.startswith(b"Subject: =?utf-8?") for line in subject_lines)
    assert parse(raw)["Subject"] == "Non remis / Undelivered: Résultats d'analyse"


def test_delay_subject() -> None:
    message = parse(build([DAVE_DELAYED], kind="delay"))
    assert message["Subject"] == "Retardé / Delayed: Résultats d'analyse"


def test_subject_without_original_subject() -> None:
    message = parse(build(original=b"From: a@cpts.example\r\n\r\nbody\r\n"))
    assert message["Subject"] == "Non remis / Undelivered"
    assert message["In-Reply-To"] is None


def test_per_message_fields() -> None:
    first = status_blocks(parse(build()))[0]
    assert first["Reporting-MTA"] == "dns; relay.cpts.example"
    assert first["Original-Envelope-Id"] == "ENV-42"
    assert parsedate_to_datetime(first["Arrival-Date"]) == ARRIVED
    assert "Original-Envelope-Id" not in status_blocks(parse(build(envid=None)))[0]


def test_one_dsn_lists_several_recipients() -> None:
    blocks = status_blocks(parse(build()))
    assert len(blocks) == 3
    bob, carol = blocks[1], blocks[2]
    assert bob["Final-Recipient"] == "rfc822; bob@hop.example"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx.hop.example"
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@hop.example>: user unknown"
    assert parsedate_to_datetime(bob["Last-Attempt-Date"]) == BOB.last_attempt
    assert "Will-Retry-Until" not in bob
    assert carol["Final-Recipient"] == "rfc822; carol@hop.example"
    assert carol["Status"] == "4.4.7"
    assert "Remote-MTA" not in carol
    assert "Diagnostic-Code" not in carol
    assert "Will-Retry-Until" not in carol  # only for "delayed"


def test_delay_block_has_will_retry_until() -> None:
    block = status_blocks(parse(build([DAVE_DELAYED], kind="delay")))[1]
    assert block["Action"] == "delayed"
    assert block["Status"] == "4.4.1"
    assert parsedate_to_datetime(block["Will-Retry-Until"]) == DAVE_DELAYED.will_retry_until


def test_original_recipient_field() -> None:
    rcpt = FailedRecipient(
        "bob@hop.example", "5.1.1", "failed", original_recipient="rfc822;Bob@Hop.example"
    )
    block = status_blocks(parse(build([rcpt])))[1]
    assert block["Original-Recipient"] == "rfc822;Bob@Hop.example"


def test_human_part_in_french_and_english() -> None:
    text = text_of(parts(parse(build()))[0])
    assert "n'a pas pu être remis" in text
    assert "could not be delivered" in text
    for address in ("bob@hop.example", "carol@hop.example"):
        assert f"Destinataire : {address}" in text
        assert f"Recipient: {address}" in text
    assert "adresse du destinataire inconnue (5.1.1)" in text
    assert "unknown recipient address (5.1.1)" in text
    assert "délai de remise dépassé (4.4.7)" in text
    assert "Reply from mx.hop.example: 550 5.1.1 <bob@hop.example>: user unknown" in text


def test_human_part_of_a_delay() -> None:
    text = text_of(parts(parse(build([DAVE_DELAYED], kind="delay")))[0])
    assert "est retardée" in text
    assert "is delayed" in text
    assert "Will retry until: 2025-06-07 05:00:00 +0000" in text
    assert "Nouvelles tentatives jusqu'au : 2025-06-07 05:00:00 +0000" in text


def test_headers_part_keeps_the_headers() -> None:
    headers = parts(parse(build()))[2]
    data = headers.get_payload(decode=True)
    assert isinstance(data, bytes)
    assert data == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"
    assert headers["Content-Transfer-Encoding"] == "7bit"


@pytest.mark.parametrize("newline", [b"\r\n", b"\n", b"\r"])
def test_no_body_content_leaks(newline: bytes) -> None:
    original = ORIGINAL.replace(b"\r\n", newline) + SECRET.encode() + newline
    raw = build(original=original)
    message = parse(raw)
    decoded = [text_of(parts(message)[0]), str(parts(message)[1]), str(parts(message)[2])]
    for needle in ("BODY-SECRET-7f3a", "VIH positif"):
        assert needle.encode() not in raw
        assert all(needle not in text for text in decoded)
        assert needle not in str(message)


def test_eight_bit_original_headers_go_quoted_printable() -> None:
    # RFC 6532 raw UTF-8 headers and an over-long line.
    long_line = b"X-Long: " + b"x" * 2000
    original = "Subject: Compte rendu opératoire\r\n".encode() + long_line + b"\r\n\r\nsecret\r\n"
    raw = build(original=original)
    assert_wire_format(raw)
    assert raw.isascii()
    message = parse(raw)
    headers = parts(message)[2]
    assert headers["Content-Transfer-Encoding"] == "quoted-printable"
    data = headers.get_payload(decode=True)
    assert isinstance(data, bytes)
    assert (
        data.replace(b"\r\n", b"\n")
        == original.split(b"\r\n\r\n")[0].replace(b"\r\n", b"\n") + b"\n"
    )
    assert message["Subject"] == "Non remis / Undelivered: Compte rendu opératoire"


def test_hostile_fields_cannot_inject_headers_or_long_lines() -> None:
    rcpt = FailedRecipient(
        recipient="bob@hop.example",
        status="5.7.1",
        action="failed",
        diagnostic_code="smtp; 550 5.7.1 no\r\nBcc: evil@attacker.example\r\n\r\n\x00\x1b[31m"
        + "y" * 5000,
        remote_mta="mx.hop.example\r\nX-Evil: 1",
    )
    raw = build([rcpt], envid="ENV\r\nX-Injected: yes", original=b"Subject: \x1b]0;" + b"s" * 3000)
    assert_wire_format(raw)
    for line in raw.split(b"\r\n"):
        assert not line.startswith((b"Bcc:", b"X-Evil:", b"X-Injected:"))
    block = status_blocks(parse(raw))[1]
    assert block["Diagnostic-Code"].startswith("smtp; 550 5.7.1 no Bcc: evil@attacker.example")
    assert len(block["Diagnostic-Code"]) <= 800


def test_diagnostic_without_type_gets_smtp() -> None:
    rcpt = FailedRecipient("bob@hop.example", "5.1.1", "failed", "550 5.1.1 unknown")
    assert status_blocks(parse(build([rcpt])))[1]["Diagnostic-Code"] == ("smtp; 550 5.1.1 unknown")


def test_non_ascii_recipient_uses_rfc6533_utf8_type() -> None:
    rcpt = FailedRecipient("hélène@hop.example", "5.1.1", "failed")
    raw = build([rcpt])
    assert raw.isascii()  # the report stays 7-bit
    assert b"h\\x{E9}l\\x{E8}ne@hop.example" in raw
    block = status_blocks(parse(raw))[1]
    assert block["Final-Recipient"] == "utf-8; h\\x{E9}l\\x{E8}ne@hop.example"
    assert "Destinataire : hélène@hop.example" in text_of(parts(parse(raw))[0])


def test_null_sender_gets_no_dsn() -> None:
    for sender in ("", "<>"):
        with pytest.raises(ValueError, match="null reverse-path"):
            build(sender=sender)


@pytest.mark.parametrize(
    ("failed", "kind"),
    [
        ([], "failure"),
        ([DAVE_DELAYED], "failure"),
        ([BOB], "delay"),
        ([BOB, DAVE_DELAYED], "failure"),
    ],
)
def test_inconsistent_recipients_are_refused(failed: list[FailedRecipient], kind: DsnKind) -> None:
    with pytest.raises(ValueError):
        build(failed, kind=kind)


def test_naive_dates_and_bad_hosts_are_refused() -> None:
    naive = dt.datetime(2025, 6, 2, 10, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        build_dsn(
            reporting_mta="relay.cpts.example",
            original_envelope_id=None,
            original_sender="a@cpts.example",
            arrival_date=naive,
            failed=[BOB],
            original_headers=b"",
            kind="failure",
            now=NOW,
            message_id_domain="cpts.example",
        )
    with pytest.raises(ValueError, match="host name"):
        build_dsn(
            reporting_mta="relay.cpts.example\r\nX: y",
            original_envelope_id=None,
            original_sender="a@cpts.example",
            arrival_date=NOW,
            failed=[BOB],
            original_headers=b"",
            kind="failure",
            now=NOW,
            message_id_domain="cpts.example",
        )
    with pytest.raises(ValueError, match="timezone-aware"):
        FailedRecipient("bob@hop.example", "5.1.1", "failed", last_attempt=naive)


@pytest.mark.parametrize(
    ("status", "action"),
    [
        ("5.1", "failed"),
        ("6.1.1", "failed"),
        ("5.1.1x", "failed"),
        ("2.0.0", "failed"),
        ("5.1.1", "delayed"),
        ("4.4.1", "delivered"),
    ],
)
def test_bad_status_or_action(status: str, action: str) -> None:
    with pytest.raises(ValueError):
        FailedRecipient("bob@hop.example", status, action)  # type: ignore[arg-type]


def test_bad_recipient_address() -> None:
    for address in ("", "bob@hop.example\r\nBcc: x", "bob smith@hop.example"):
        with pytest.raises(ValueError):
            FailedRecipient(address, "5.1.1", "failed")


@settings(max_examples=200, deadline=None)
@given(
    diagnostic=st.text(max_size=1500),
    remote=st.text(max_size=300),
    original=st.binary(max_size=3000),
)
def test_any_untrusted_input_gives_a_well_formed_dsn(
    diagnostic: str, remote: str, original: bytes
) -> None:
    rcpt = FailedRecipient(
        "bob@hop.example", "5.0.0", "failed", diagnostic or None, remote or None, NOW
    )
    raw = build([rcpt], original=original)
    assert_wire_format(raw)
    assert raw.isascii()
    message = parse(raw)
    assert len(parts(message)) == 3
    assert len(status_blocks(message)) == 2
