"""Submission over real sockets with real clients (smtplib, aiosmtplib), real TLS."""

from __future__ import annotations

import asyncio
import base64
import json
import smtplib

import aiosmtplib
import pytest

from relay.store.store import AuditFilter
from tests.harness import DUPONT_BOX, MARTIN_BOX, PASSWORDS, SHARED, RunningDaemon

LETTER = (
    "From: {frm}\r\n"
    "To: <{to}>\r\n"
    "Subject: Compte rendu de consultation\r\n"
    "Message-ID: <{mid}@cabinet.example>\r\n"
    "X-MSS-CODECDA: 11488-4\r\n"
    "X-MSS-INS:  O\r\n"
    "X-MSS-NIL: Logiciel-Test/1.0\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "\r\n"
    "Bonjour, ci-joint le compte rendu.\r\n"
    ".Ligne qui commence par un point.\r\n"
)


def letter(frm: str, to: str, mid: str = "cr1") -> bytes:
    return LETTER.format(frm=frm, to=to, mid=mid).encode()


def submit(
    d: RunningDaemon,
    login: str,
    password: str,
    mail_from: str,
    rcpts: list[str],
    data: bytes,
    *,
    authzid: str | None = None,
) -> tuple[int, bytes]:
    """One STARTTLS submission with smtplib; returns the DATA reply (or the refusal)."""
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=10) as s:
        s.starttls(context=d.client_context())
        s.ehlo("cabinet.example")
        if authzid is None:
            s.login(login, password)
        else:
            blob = base64.b64encode(f"{authzid}\0{login}\0{password}".encode()).decode()
            code, msg = s.docmd("AUTH", f"PLAIN {blob}")
            if code != 235:
                return code, msg
        code, msg = s.mail(mail_from)
        if code != 250:
            return code, msg
        for r in rcpts:
            code, msg = s.rcpt(r)
            if code != 250:
                return code, msg
        return s.data(data)


async def test_submission_delivers_with_trace_and_headers_intact(daemon: RunningDaemon) -> None:
    data = letter(f"Dr Martin <{MARTIN_BOX}>", SHARED)
    code, msg = await asyncio.to_thread(
        submit, daemon, "martin", PASSWORDS["martin"], MARTIN_BOX, [SHARED], data
    )
    assert code == 250, msg
    assert msg.startswith(b"2.0.0 Ok: queued as ")
    [stored] = await daemon.store.messages(SHARED)
    head, _, _ = stored.raw.partition(b"\r\n")
    assert head.startswith(b"Received: from cabinet.example ([127.0.0.1])")
    trace = stored.raw[: stored.raw.index(b"From: Dr Martin")]
    assert b"with ESMTPSA" in trace and b"TLSv1.3" in trace
    assert msg.split()[-1] in trace  # the id of the 250 reply is the Received: id
    # every header the client sent follows byte for byte, then the MSA adds the missing
    # Date (RFC 6409 §8.1); the body is intact (smtplib dot-stuffs, we unstuff)
    head_sent, _, body_sent = data.partition(b"\r\n\r\n")
    assert head_sent + b"\r\nDate: " in stored.raw
    assert stored.raw.endswith(b"\r\n\r\n" + body_sent)
    assert b"X-MSS-INS:  O\r\n" in stored.raw
    assert b"Sender:" not in stored.raw  # martin sends as his own box
    [event] = await daemon.store.audit_rows(AuditFilter(action="message.accepted"))
    details = json.loads(event.data)["details"]
    assert event.person == "martin" and event.box == MARTIN_BOX
    assert details["recipients"] == [SHARED]
    assert details["message_id"] == "cr1@cabinet.example"
    # the size of what was stored, trace header included (it said 0 before issue 9)
    assert details["size_bytes"] == len(stored.raw) > len(data)


async def test_implicit_tls_with_aiosmtplib(daemon: RunningDaemon) -> None:
    client = aiosmtplib.SMTP(
        hostname="localhost",
        port=daemon.ports["submission-tls"],
        use_tls=True,
        tls_context=daemon.client_context(),
    )
    await client.connect()
    await client.login("dupont", PASSWORDS["dupont"])
    errors, reply = await client.sendmail(DUPONT_BOX, [SHARED], letter(DUPONT_BOX, SHARED, "i1"))
    await client.quit()
    assert errors == {}
    assert reply.startswith("2.0.0 Ok: queued as")
    [stored] = await daemon.store.messages(SHARED)
    assert b"with ESMTPSA" in stored.raw


async def test_coholder_sends_as_shared_box_with_sender_header(daemon: RunningDaemon) -> None:
    code, msg = await asyncio.to_thread(
        submit,
        daemon,
        "dupont",
        PASSWORDS["dupont"],
        SHARED,
        [MARTIN_BOX],
        letter(f"Secretariat <{SHARED}>", MARTIN_BOX),
    )
    assert code == 250, msg
    [stored] = await daemon.store.messages(MARTIN_BOX)
    assert f'Sender: "Marie Dupont" <{DUPONT_BOX}>'.encode() in stored.raw
    [event] = await daemon.store.audit_rows(AuditFilter(action="message.accepted"))
    assert (event.person, event.box) == ("dupont", SHARED)


@pytest.mark.parametrize(
    ("login", "mail_from", "expected"),
    [
        ("dupont", MARTIN_BOX, f"dupont may not send as {MARTIN_BOX}"),
        ("leroy", SHARED, f"your rights on {SHARED} do not include 'send'"),
        ("ancien", SHARED, f"your co-holding of {SHARED} is not valid on"),
        ("dupont", "someone@elsewhere.example", "is not a mailbox of this server"),
    ],
)
async def test_send_as_refused_names_box_and_missing_right(
    daemon: RunningDaemon, login: str, mail_from: str, expected: str
) -> None:
    code, msg = await asyncio.to_thread(
        submit,
        daemon,
        login,
        PASSWORDS[login],
        mail_from,
        [MARTIN_BOX],
        letter(mail_from, MARTIN_BOX),
    )
    assert code == 550
    assert msg.startswith(b"5.7.1 ")
    assert expected in msg.decode()
    [event] = await daemon.store.audit_rows(AuditFilter(action="message.refused"))
    assert event.person == login
    assert json.loads(event.data)["details"]["stage"] == "mail"
    assert await daemon.store.messages(MARTIN_BOX) == []


async def test_from_header_must_be_sendable_too(daemon: RunningDaemon) -> None:
    code, msg = await asyncio.to_thread(
        submit,
        daemon,
        "dupont",
        PASSWORDS["dupont"],
        SHARED,
        [MARTIN_BOX],
        letter(f"Dr Martin <{MARTIN_BOX}>", MARTIN_BOX),
    )
    assert code == 550
    assert msg.startswith(b"5.7.1 From: ")
    assert MARTIN_BOX.encode() in msg
    assert await daemon.store.messages(MARTIN_BOX) == []


async def test_authzid_as_shared_box(daemon: RunningDaemon) -> None:
    """RFC 4616: dupont authenticates and authorises as the shared box."""
    code, msg = await asyncio.to_thread(
        submit,
        daemon,
        "dupont",
        PASSWORDS["dupont"],
        SHARED,
        [MARTIN_BOX],
        letter(SHARED, MARTIN_BOX),
        authzid=SHARED,
    )
    assert code == 250, msg
    # the same session may then not send as dupont's own box
    code, msg = await asyncio.to_thread(
        submit,
        daemon,
        "dupont",
        PASSWORDS["dupont"],
        DUPONT_BOX,
        [MARTIN_BOX],
        letter(DUPONT_BOX, MARTIN_BOX),
        authzid=SHARED,
    )
    assert code == 550 and b"acts as " + SHARED.encode() in msg
    [ok] = await daemon.store.audit_rows(AuditFilter(action="auth.succeeded", limit=1))
    assert (ok.person, ok.box) == ("dupont", SHARED)


async def test_authzid_for_a_box_not_coheld_is_refused(daemon: RunningDaemon) -> None:
    code, msg = await asyncio.to_thread(
        submit,
        daemon,
        "dupont",
        PASSWORDS["dupont"],
        MARTIN_BOX,
        [SHARED],
        letter(MARTIN_BOX, SHARED),
        authzid=MARTIN_BOX,
    )
    assert code == 535
    assert b"dupont may not act as " + MARTIN_BOX.encode() in msg


async def test_star_login_form(daemon: RunningDaemon) -> None:
    code, msg = await asyncio.to_thread(
        submit,
        daemon,
        f"dupont*{SHARED}",
        PASSWORDS["dupont"],
        SHARED,
        [MARTIN_BOX],
        letter(SHARED, MARTIN_BOX),
    )
    assert code == 250, msg


async def test_auth_external_with_client_certificate(daemon: RunningDaemon) -> None:
    def run() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=10) as s:
            s.starttls(context=daemon.client_context(cert="person-martin"))
            s.ehlo("cabinet.example")
            assert "EXTERNAL" in s.esmtp_features["auth"]
            code, msg = s.docmd("AUTH", "EXTERNAL =")
            assert code == 235, msg
            refused = s.sendmail(MARTIN_BOX, [SHARED], letter(MARTIN_BOX, SHARED))
            return (250, b"") if not refused else (550, repr(refused).encode())

    assert (await asyncio.to_thread(run))[0] == 250
    [ok] = await daemon.store.audit_rows(AuditFilter(action="auth.succeeded"))
    assert ok.person == "martin" and json.loads(ok.data)["details"]["mechanism"] == "EXTERNAL"


async def test_auth_external_without_certificate_fails(daemon: RunningDaemon) -> None:
    def run() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=10) as s:
            s.starttls(context=daemon.client_context())
            s.ehlo("x")
            return s.docmd("AUTH", "EXTERNAL =")

    code, msg = await asyncio.to_thread(run)
    assert (code, msg) == (535, b"5.7.8 EXTERNAL needs a client certificate")


async def test_no_mail_without_auth_and_no_auth_before_tls(daemon: RunningDaemon) -> None:
    def run() -> list[tuple[int, bytes]]:
        out = []
        with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=10) as s:
            s.ehlo("x")
            assert "auth" not in s.esmtp_features
            assert "starttls" in s.esmtp_features
            out.append(s.docmd("MAIL", f"FROM:<{MARTIN_BOX}>"))
            s.starttls(context=daemon.client_context())
            s.ehlo("x")
            for feature in ("size", "8bitmime", "pipelining", "enhancedstatuscodes", "smtputf8"):
                assert feature in s.esmtp_features, feature
            assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
            out.append(s.docmd("MAIL", f"FROM:<{MARTIN_BOX}>"))
        return out

    before_tls, after_tls = await asyncio.to_thread(run)
    assert before_tls == (530, b"5.7.0 Must issue a STARTTLS command first")
    assert after_tls == (530, b"5.7.0 Authentication required")


async def test_repeated_failures_are_slowed_then_locked(daemon: RunningDaemon) -> None:
    """4 failures (the test config's limit) lock the login: even the right password
    then gets 454 4.7.0; every failure is audited."""

    def attempt(password: str) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=20) as s:
            s.starttls(context=daemon.client_context())
            s.ehlo("x")
            blob = base64.b64encode(f"\0dupont\0{password}".encode()).decode()
            return s.docmd("AUTH", f"PLAIN {blob}")

    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(4):
        assert await asyncio.to_thread(attempt, "wrong") == (
            535,
            b"5.7.8 Authentication credentials invalid",
        )
    slowed = loop.time() - started
    assert slowed >= 0.1 + 0.2 + 0.4 + 0.8  # the delays we promise
    code, msg = await asyncio.to_thread(attempt, PASSWORDS["dupont"])
    assert code == 454 and msg.startswith(b"4.7.0 ")
    failures = await daemon.store.audit_rows(AuditFilter(action="auth.failed"))
    assert len(failures) == 5
    assert all(json.loads(f.data)["details"]["login"] == "dupont" for f in failures)


async def test_size_declared_too_big_refused_at_mail(daemon: RunningDaemon) -> None:
    limit = daemon.runtime.config.limits.max_message_bytes

    def run() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=10) as s:
            s.starttls(context=daemon.client_context())
            s.login("martin", PASSWORDS["martin"])
            assert s.esmtp_features["size"] == str(limit)
            return s.docmd("MAIL", f"FROM:<{MARTIN_BOX}> SIZE={limit + 1}")

    code, msg = await asyncio.to_thread(run)
    assert code == 552 and msg.startswith(b"5.3.4 ")


async def test_too_many_recipients(daemon: RunningDaemon) -> None:
    limit = daemon.runtime.config.limits.max_recipients

    def run() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=10) as s:
            s.starttls(context=daemon.client_context())
            s.login("martin", PASSWORDS["martin"])
            s.mail(MARTIN_BOX)
            for _ in range(limit):
                assert s.rcpt(SHARED)[0] == 250
            return s.rcpt(SHARED)

    code, msg = await asyncio.to_thread(run)
    assert code == 452 and msg.startswith(b"4.5.3 Too many recipients")


async def test_unknown_local_box_refused_at_rcpt(daemon: RunningDaemon) -> None:
    code, msg = await asyncio.to_thread(
        submit,
        daemon,
        "martin",
        PASSWORDS["martin"],
        MARTIN_BOX,
        ["personne@cpts-demo.mssante.fr"],
        letter(MARTIN_BOX, SHARED),
    )
    assert (code, msg) == (550, b"5.1.1 personne@cpts-demo.mssante.fr: no such mailbox here")


async def test_line_too_long_refused_nothing_stored(daemon: RunningDaemon) -> None:
    data = letter(MARTIN_BOX, SHARED) + b"x" * 1200 + b"\r\n"
    code, msg = await asyncio.to_thread(
        submit, daemon, "martin", PASSWORDS["martin"], MARTIN_BOX, [SHARED], data
    )
    assert code == 500 and msg.startswith(b"5.5.2 Line too long")
    assert await daemon.store.messages(SHARED) == []


async def test_unexpected_error_gets_451_with_reference_not_text(
    daemon: RunningDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store failing at DATA: the peer sees a reference, never the exception text."""

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internal detail /var/lib/db")

    monkeypatch.setattr(daemon.store, "accept", broken)
    code, msg = await asyncio.to_thread(
        submit,
        daemon,
        "martin",
        PASSWORDS["martin"],
        MARTIN_BOX,
        [SHARED],
        letter(MARTIN_BOX, SHARED),
    )
    assert code == 451
    assert msg.startswith(b"4.3.0 Local error in processing (reference ")
    assert b"secret" not in msg and b"RuntimeError" not in msg


async def test_plain_client_gets_no_smtp_on_implicit_port(daemon: RunningDaemon) -> None:
    def run() -> None:
        with smtplib.SMTP("127.0.0.1", daemon.ports["submission-tls"], timeout=3) as s:
            s.ehlo("x")

    with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError, OSError)):
        await asyncio.to_thread(run)
