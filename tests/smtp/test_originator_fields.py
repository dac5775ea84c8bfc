"""Who a submitted message says it is from (issue 9, item 8): a null envelope sender
for a disposition notification (RFC 8098 §3), `Sender:` and `Resent-From:` checked
against the person's send-as rights like From:, and no message without From:."""

from __future__ import annotations

import asyncio
import json
import smtplib

import pytest

from relay.store.store import AuditFilter
from tests.harness import DUPONT_BOX, MARTIN_BOX, PASSWORDS, SHARED, RunningDaemon

MDN = (
    "From: <{frm}>\r\n"
    "To: <{to}>\r\n"
    "Subject: Disposition notification\r\n"
    "Message-ID: <mdn-1@cabinet.example>\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/report; report-type="disposition-notification";\r\n'
    '\tboundary="mdn"\r\n'
    "\r\n"
    "--mdn\r\nContent-Type: text/plain\r\n\r\nLe message a \xe9t\xe9 lu.\r\n"
    "--mdn\r\nContent-Type: message/disposition-notification\r\n\r\n"
    "Final-Recipient: rfc822; {frm}\r\n"
    "Original-Message-ID: <cr1@cabinet.example>\r\n"
    "Disposition: manual-action/MDN-sent-manually; displayed\r\n"
    "--mdn--\r\n"
)


def send(d: RunningDaemon, login: str, mail_from: str, rcpt: str, data: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=30) as s:
        s.starttls(context=d.client_context())
        s.login(login, PASSWORDS[login])
        code, msg = s.mail(mail_from)
        if code != 250:
            return code, msg
        code, msg = s.rcpt(rcpt)
        if code != 250:
            return code, msg
        try:
            return s.data(data)
        except smtplib.SMTPDataError as exc:
            error = exc.smtp_error
            return exc.smtp_code, error if isinstance(error, bytes) else error.encode()


def mdn(frm: str, to: str) -> bytes:
    return MDN.format(frm=frm, to=to).encode("utf-8")


async def refusals(d: RunningDaemon) -> list[dict[str, object]]:
    rows = await d.store.audit_rows(AuditFilter(action="message.refused"))
    return [json.loads(r.data)["details"] for r in rows]


async def test_mdn_with_null_sender_accepted_and_audited(daemon: RunningDaemon) -> None:
    code, msg = await asyncio.to_thread(send, daemon, "martin", "", SHARED, mdn(MARTIN_BOX, SHARED))
    assert code == 250, msg
    [stored] = await daemon.store.messages(SHARED)
    assert b'report-type="disposition-notification"' in stored.raw
    [event] = await daemon.store.audit_rows(AuditFilter(action="message.accepted"))
    record = json.loads(event.data)
    assert event.person == "martin" and event.box == MARTIN_BOX  # the box of its From:
    assert record["details"]["sender"] == ""
    assert record["request"] == "MAIL FROM:<> (1 RCPT), a disposition notification (RFC 8098)"


async def test_coholder_mdn_from_the_shared_box(daemon: RunningDaemon) -> None:
    code, msg = await asyncio.to_thread(
        send, daemon, "dupont", "", MARTIN_BOX, mdn(SHARED, MARTIN_BOX)
    )
    assert code == 250, msg
    [stored] = await daemon.store.messages(MARTIN_BOX)
    assert b'Sender: "Marie Dupont" <' + DUPONT_BOX.encode() + b">" in stored.raw


async def test_null_sender_refused_for_anything_but_an_mdn(daemon: RunningDaemon) -> None:
    letter = f"From: <{MARTIN_BOX}>\r\nSubject: x\r\n\r\nBonjour.\r\n".encode()
    code, msg = await asyncio.to_thread(send, daemon, "martin", "", SHARED, letter)
    assert (code, msg) == (
        550,
        b"5.7.1 A null sender (MAIL FROM:<>) is for disposition notifications only "
        b"(multipart/report; report-type=disposition-notification, RFC 8098 section 3)",
    )
    assert await daemon.store.messages(SHARED) == []
    [event] = await refusals(daemon)
    assert event["rule"] == "send-as.null" and event["stage"] == "data"


async def test_mdn_from_a_box_not_held_refused(daemon: RunningDaemon) -> None:
    code, msg = await asyncio.to_thread(send, daemon, "dupont", "", SHARED, mdn(MARTIN_BOX, SHARED))
    assert code == 550 and msg.startswith(
        b"5.7.1 From: dupont may not send as " + MARTIN_BOX.encode()
    )
    assert await daemon.store.messages(SHARED) == []


@pytest.mark.parametrize(
    ("head", "reply", "rule"),
    [
        (
            "Subject: sans auteur\r\n",
            b"5.6.0 The message has no From: header field (RFC 5322 section 3.6 requires one);"
            b" nothing stored",
            "message.from-missing",
        ),
        (
            f"From: <{MARTIN_BOX}>\r\nFrom: <{MARTIN_BOX}>\r\n",
            b"5.6.0 The message must have exactly one From: field naming its author"
            b" (RFC 5322 section 3.6); nothing stored",
            "message.from-count",
        ),
    ],
    ids=["no-from", "two-from"],
)
async def test_from_field_required_once(
    daemon: RunningDaemon, head: str, reply: bytes, rule: str
) -> None:
    data = (head + "\r\nBonjour.\r\n").encode()
    code, msg = await asyncio.to_thread(send, daemon, "martin", MARTIN_BOX, SHARED, data)
    assert (code, msg) == (550, reply)
    assert await daemon.store.messages(SHARED) == []
    [event] = await refusals(daemon)
    assert event["rule"] == rule


@pytest.mark.parametrize(
    ("login", "mail_from", "extra", "refused"),
    [
        # martin, owner of his box, writes a secretary's box as the agent
        (
            "martin",
            MARTIN_BOX,
            f"Sender: <{DUPONT_BOX}>\r\n",
            f"Sender: martin may not send as {DUPONT_BOX}",
        ),
        # a resend naming a box the person does not hold
        (
            "dupont",
            DUPONT_BOX,
            f"Resent-From: <{MARTIN_BOX}>\r\n",
            f"Resent-From: dupont may not send as {MARTIN_BOX}",
        ),
        (
            "dupont",
            DUPONT_BOX,
            f"Resent-Sender: <{MARTIN_BOX}>\r\n",
            f"Resent-Sender: dupont may not send as {MARTIN_BOX}",
        ),
        # allowed: the agent's own box; a resend as the shared box dupont may send as,
        # above an older resend block by someone else (RFC 5322 §3.6.6)
        ("martin", MARTIN_BOX, f"Sender: <{MARTIN_BOX}>\r\n", None),
        (
            "dupont",
            DUPONT_BOX,
            f"Resent-From: <{SHARED}>\r\nResent-Date: Mon, 1 Dec 2026 10:00:00 +0100\r\n"
            f"Resent-From: <{MARTIN_BOX}>\r\nResent-Date: Sun, 30 Nov 2026 10:00:00 +0100\r\n",
            None,
        ),
    ],
    ids=["sender-forged", "resent-from-forged", "resent-sender-forged", "sender-own", "resent-own"],
)
async def test_sender_and_resent_fields_follow_send_as_rights(
    daemon: RunningDaemon, login: str, mail_from: str, extra: str, refused: str | None
) -> None:
    data = (f"From: <{mail_from}>\r\n{extra}Subject: x\r\n\r\nBonjour.\r\n").encode()
    code, msg = await asyncio.to_thread(send, daemon, login, mail_from, SHARED, data)
    if refused is None:
        assert code == 250, msg
        return
    assert code == 550 and msg.startswith(b"5.7.1 " + refused.encode()), msg
    assert await daemon.store.messages(SHARED) == []
    [event] = await refusals(daemon)
    assert event["stage"] == "data" and str(event["rule"]).startswith("send-as.")
