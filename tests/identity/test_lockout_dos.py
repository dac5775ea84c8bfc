"""Issue 9 item 6, over the wire: a password guesser at one address must not lock a
person out for a client at another address (IMAP and SMTP submission, real TLS).

Before: five wrong passwords from anywhere locked the login everywhere for 5 minutes
(the pre-auth fuzzer locked everyone on 127.0.0.1 out). The second client connects from
127.0.0.2 (loopback answers the whole 127/8).
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import smtplib
import socket
import ssl
from pathlib import Path

from relay.config.model import StorageConfig
from relay.store.store import AuditFilter
from relay.tls.pki import DevPki
from tests.harness import PASSWORDS, RunningDaemon, start_daemon

FUZZER, CLINIC = "127.0.0.1", "127.0.0.2"
# The test config: 4 failures of a login from an address lock it there (harness.py).
PAIR_LOCK = 4


class Imap(imaplib.IMAP4_SSL):
    """imaplib over TLS from a chosen source address."""

    def __init__(self, d: RunningDaemon, source: str) -> None:
        self._source = source
        super().__init__("localhost", d.ports["imap-tls"], ssl_context=d.client_context())

    def _create_socket(self, timeout: float | None) -> ssl.SSLSocket:
        sock = socket.create_connection(
            ("127.0.0.1", self.port), timeout or 30, source_address=(self._source, 0)
        )
        wrapped: ssl.SSLSocket = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
        return wrapped


def imap_login(d: RunningDaemon, source: str, login: str, password: str) -> str:
    """'OK', or the response code of the refusal (AUTHENTICATIONFAILED, UNAVAILABLE)."""
    client = Imap(d, source)
    try:
        client.login(login, password)
    except imaplib.IMAP4.error as exc:
        return str(exc).split("[", 1)[1].split("]", 1)[0] if "[" in str(exc) else str(exc)
    finally:
        with contextlib.suppress(imaplib.IMAP4.abort, OSError):
            client.logout()
    return "OK"


def smtp_login(d: RunningDaemon, source: str, login: str, password: str) -> int:
    with smtplib.SMTP(
        "127.0.0.1", d.ports["submission"], timeout=30, source_address=(source, 0)
    ) as s:
        s.starttls(context=d.client_context())
        s.ehlo("client.example")
        s.user, s.password = login, password
        try:
            s.auth("PLAIN", s.auth_plain)  # one attempt (login() would try each mechanism)
        except smtplib.SMTPResponseException as exc:
            return exc.smtp_code
        return 235


async def test_imap_guesser_elsewhere_does_not_lock_the_person_out(daemon: RunningDaemon) -> None:
    def run() -> tuple[list[str], str, str, str]:
        guesses = [imap_login(daemon, FUZZER, "dupont", f"guess-{i}") for i in range(PAIR_LOCK + 2)]
        clinic = imap_login(daemon, CLINIC, "dupont", PASSWORDS["dupont"])
        fuzzer_right = imap_login(daemon, FUZZER, "dupont", PASSWORDS["dupont"])
        fuzzer_other = imap_login(daemon, FUZZER, "martin", PASSWORDS["martin"])
        return guesses, clinic, fuzzer_right, fuzzer_other

    guesses, clinic, fuzzer_right, fuzzer_other = await asyncio.to_thread(run)
    assert guesses == ["AUTHENTICATIONFAILED"] * PAIR_LOCK + ["UNAVAILABLE"] * 2
    assert clinic == "OK"  # the person, from an address that has not failed
    assert fuzzer_right == "UNAVAILABLE"  # dupont stays refused from the guesser's address
    assert fuzzer_other == "OK"  # one login guessed is not the whole address
    failed = await daemon.store.audit_rows(AuditFilter(action="auth.failed"))
    assert len([r for r in failed if r.peer == FUZZER]) == PAIR_LOCK + 3  # audited as now
    assert not [r for r in failed if r.peer == CLINIC]
    ok = await daemon.store.audit_rows(AuditFilter(action="auth.succeeded"))
    assert {(r.peer, r.person) for r in ok} == {(CLINIC, "dupont"), (FUZZER, "martin")}


async def test_smtp_guesser_elsewhere_does_not_lock_the_person_out(daemon: RunningDaemon) -> None:
    def run() -> tuple[list[int], int]:
        guesses = [smtp_login(daemon, FUZZER, "dupont", f"guess-{i}") for i in range(PAIR_LOCK + 1)]
        return guesses, smtp_login(daemon, CLINIC, "dupont", PASSWORDS["dupont"])

    guesses, clinic = await asyncio.to_thread(run)
    assert guesses == [535] * PAIR_LOCK + [454]
    assert clinic == 235


async def test_password_spraying_locks_the_address_only(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> None:
    d = await start_daemon(
        tmp_path, dev_pki, storage, limits="auth_address_failures_before_lockout = 6"
    )
    try:

        def run() -> tuple[list[str], str, str]:
            sprayed = [imap_login(d, FUZZER, f"user{i}", "Password1") for i in range(7)]
            martin_from_fuzzer = imap_login(d, FUZZER, "martin", PASSWORDS["martin"])
            martin_from_clinic = imap_login(d, CLINIC, "martin", PASSWORDS["martin"])
            return sprayed, martin_from_fuzzer, martin_from_clinic

        sprayed, from_fuzzer, from_clinic = await asyncio.to_thread(run)
        assert sprayed == ["AUTHENTICATIONFAILED"] * 6 + ["UNAVAILABLE"]
        assert from_fuzzer == "UNAVAILABLE"  # the sprayer's address is refused for now
        assert from_clinic == "OK"
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)
