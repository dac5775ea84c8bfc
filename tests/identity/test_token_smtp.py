"""OAUTHBEARER and XOAUTH2 on SMTP submission (curl, smtplib), and the login-method
policy (`auth.methods`) on SMTP and IMAP."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import json
import smtplib
import subprocess
from pathlib import Path

import pytest

from relay.store.store import AuditFilter
from tests.harness import DOMAIN, PASSWORDS, SHARED, RunningDaemon
from tests.identity.conftest import StartDaemon
from tests.imap.support import connect_tls, ok
from tests.issuer import LEROY_ID, SCOPE, LocalIssuer, oauthbearer, xoauth2

MESSAGE = b"Subject: Compte rendu\r\n\r\nBonjour.\r\n"
STRONG_ONLY = 'auth.methods = ["certificate", "token"]'


def smtp_starttls(d: RunningDaemon) -> smtplib.SMTP:
    s = smtplib.SMTP("localhost", d.ports["submission"], timeout=20)
    s.starttls(context=d.client_context())
    s.ehlo()
    return s


@pytest.mark.parametrize("engine_name", ["sqlite"])
async def test_curl_oauth2_bearer_submits(
    token_daemon: RunningDaemon, issuer: LocalIssuer, tmp_path: Path
) -> None:
    message = tmp_path / "message.eml"
    message.write_bytes(b"From: <martin@" + DOMAIN.encode() + b">\r\n" + MESSAGE)
    done = await asyncio.to_thread(
        subprocess.run,
        [
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "30",
            "--ssl-reqd",
            "--cacert",
            str(token_daemon.pki.ca_bundle),
            "--user",
            "martin",
            "--oauth2-bearer",
            issuer.mint(),
            "--mail-from",
            f"martin@{DOMAIN}",
            "--mail-rcpt",
            SHARED,
            "--upload-file",
            str(message),
            f"smtp://localhost:{token_daemon.ports['submission']}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    [login] = await token_daemon.store.audit_rows(AuditFilter(action="auth.succeeded"))
    assert json.loads(login.data)["details"]["mechanism"] == "OAUTHBEARER"
    [accepted] = await token_daemon.store.audit_rows(AuditFilter(action="message.accepted"))
    assert accepted.person == "martin"


@pytest.mark.parametrize("engine_name", ["sqlite"])
async def test_ehlo_offers_tokens_only_after_tls(
    token_daemon: RunningDaemon, issuer: LocalIssuer
) -> None:
    def run() -> None:
        s = smtplib.SMTP("localhost", token_daemon.ports["submission"], timeout=20)
        s.ehlo()
        assert not s.has_extn("auth")
        s.starttls(context=token_daemon.client_context())
        s.ehlo()
        assert {"OAUTHBEARER", "XOAUTH2", "PLAIN"} <= set(s.esmtp_features["auth"].split())
        s.quit()

    await asyncio.to_thread(run)


async def test_smtp_refusal_is_the_rfc7628_dialogue_and_audited(
    token_daemon: RunningDaemon, issuer: LocalIssuer
) -> None:
    """Both engines: 334 with the JSON error, the client's %x01, then 535 5.7.8."""
    good, expired = issuer.mint(), issuer.mint(iat=1, nbf=1, exp=2)
    challenges: list[bytes] = []

    def run() -> None:
        s = smtplib.SMTP_SSL(
            "localhost", token_daemon.ports["submission-tls"], context=token_daemon.client_context()
        )
        s.ehlo()

        def answer(challenge: bytes | None = None) -> str:
            if challenge is None:
                return oauthbearer(expired).decode()
            challenges.append(challenge)
            return "\x01"

        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            s.auth("OAUTHBEARER", answer)
        assert info.value.smtp_code == 535 and b"5.7.8" in info.value.smtp_error
        code, _ = s.auth("XOAUTH2", lambda _=None: xoauth2(good, "martin").decode())
        assert code == 235
        s.quit()

    await asyncio.to_thread(run)
    assert json.loads(challenges[0]) == {
        "status": "invalid_token",
        "scope": SCOPE,
        "openid-configuration": issuer.discovery_url,
    }
    [failed] = await token_daemon.store.audit_rows(AuditFilter(action="auth.failed"))
    details = json.loads(failed.data)
    assert details["details"]["reason"].startswith("expired") and details["answer"].startswith(
        "535 5.7.8"
    )
    [success] = await token_daemon.audit_rows_settled(AuditFilter(action="auth.succeeded"))
    assert success.person == "martin"


async def test_strong_box_refuses_passwords_and_says_which_methods(
    start_token_daemon: StartDaemon, issuer: LocalIssuer
) -> None:
    """Both engines: the shared box takes certificates and tokens only."""
    d = await start_token_daemon(shared_box_extra=STRONG_ONLY)
    token = issuer.mint(LEROY_ID)

    def run() -> None:
        # IMAP, logging in as the box with a (right) password
        m = connect_tls(d)
        with pytest.raises(
            imaplib.IMAP4.error, match=r"AUTHENTICATIONFAILED.*certificate or token"
        ):
            m.login(f"dupont*{SHARED}", PASSWORDS["dupont"])
        m.logout()
        # IMAP, dupont as herself: the box is not there at all
        n = connect_tls(d)
        n.login("dupont", PASSWORDS["dupont"])
        listed = b"\n".join(ok(n.list('""', "*")))
        assert SHARED.encode() not in listed
        typ, _ = n.select(f'"Partages/{SHARED}/INBOX"')
        assert typ == "NO"
        n.logout()
        # IMAP, a token reaches it
        t = connect_tls(d)
        assert t.authenticate("OAUTHBEARER", lambda _: oauthbearer(token, SHARED))[0] == "OK"
        ok(t.select("INBOX"))
        t.logout()
        # SMTP, PLAIN with the box as authzid
        s = smtplib.SMTP_SSL("localhost", d.ports["submission-tls"], context=d.client_context())
        s.ehlo()
        plain = base64.b64encode(f"{SHARED}\0dupont\0{PASSWORDS['dupont']}".encode()).decode()
        code, text = s.docmd("AUTH", f"PLAIN {plain}")
        assert code == 535 and text.startswith(b"5.7.8") and b"certificate or token" in text
        # SMTP, logged in as herself, she may not send as the box
        s.login("dupont", PASSWORDS["dupont"])
        code, text = s.mail(SHARED)
        assert code == 550 and b"accepts only certificate or token logins" in text
        s.quit()

    await asyncio.to_thread(run)
    failed = await d.store.audit_rows(AuditFilter(action="auth.failed"))
    reasons = [json.loads(r.data)["details"]["reason"] for r in failed]
    assert reasons == [f"password login refused for {SHARED} by auth.methods"] * 2
    refused = await d.store.audit_rows(AuditFilter(action="message.refused"))
    assert any("send-as.auth-method" in r.data for r in refused)


@pytest.mark.parametrize("engine_name", ["sqlite"])
async def test_person_who_must_use_a_token(
    start_token_daemon: StartDaemon, issuer: LocalIssuer
) -> None:
    d = await start_token_daemon(person_extra={"leroy": 'auth.methods = ["token"]'})
    token = issuer.mint(LEROY_ID)

    def run() -> None:
        m = connect_tls(d)
        with pytest.raises(imaplib.IMAP4.error, match="leroy must log in with token"):
            m.login("leroy", "a wrong password: refused before it is even checked")
        assert m.authenticate("XOAUTH2", lambda _: xoauth2(token, "leroy"))[0] == "OK"
        m.logout()
        s = smtplib.SMTP_SSL("localhost", d.ports["submission-tls"], context=d.client_context())
        with pytest.raises(smtplib.SMTPAuthenticationError, match="must log in with token"):
            s.login("leroy", PASSWORDS["leroy"])
        s.quit()

    await asyncio.to_thread(run)
