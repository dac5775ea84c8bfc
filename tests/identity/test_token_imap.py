"""OAUTHBEARER and XOAUTH2 on IMAP with real clients (curl, imaplib, aioimaplib)
against the local issuer; every attack refused with the RFC 7628 error and audited."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import json
import subprocess
from collections.abc import Callable

import aioimaplib
import pytest

from relay.store.store import AuditFilter
from tests.harness import PASSWORDS, SHARED, RunningDaemon
from tests.identity.conftest import StartDaemon
from tests.imap.support import Raw, connect_starttls, connect_tls, ok, shared
from tests.issuer import LEROY_ID, MARTIN_ID, SCOPE, LocalIssuer, new_key, oauthbearer, xoauth2

INBOX = shared(SHARED)


def curl_imap(d: RunningDaemon, token: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "30",
            "--cacert",
            str(d.pki.ca_bundle),
            "--oauth2-bearer",
            token,
            *extra,
            f"imaps://localhost:{d.ports['imap-tls']}/",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def caps(m: imaplib.IMAP4) -> set[str]:
    typ, data = m.capability()
    assert typ == "OK"
    return set(data[0].decode().split())


@pytest.mark.parametrize("engine_name", ["sqlite"])
async def test_capabilities_only_over_tls(token_daemon: RunningDaemon) -> None:
    def run() -> None:
        m = imaplib.IMAP4("localhost", token_daemon.ports["imap"], timeout=10)
        assert "AUTH=OAUTHBEARER" not in caps(m)
        m.starttls(ssl_context=token_daemon.client_context())
        assert {"AUTH=OAUTHBEARER", "AUTH=XOAUTH2", "SASL-IR"} <= caps(m)
        m.logout()

    await asyncio.to_thread(run)


@pytest.mark.parametrize("engine_name", ["sqlite"])
async def test_no_token_mechanisms_without_an_issuer(daemon: RunningDaemon) -> None:
    def run() -> None:
        n = connect_tls(daemon)
        assert not {"AUTH=OAUTHBEARER", "AUTH=XOAUTH2"} & caps(n)
        typ, data = n._simple_command("AUTHENTICATE", "OAUTHBEARER", "AQ==")
        assert typ == "NO" and b"Unsupported" in data[-1]
        n.logout()

    await asyncio.to_thread(run)


@pytest.mark.parametrize("engine_name", ["sqlite"])
async def test_curl_oauth2_bearer_over_imaps(
    token_daemon: RunningDaemon, issuer: LocalIssuer
) -> None:
    done = await asyncio.to_thread(curl_imap, token_daemon, issuer.mint(), "--user", "martin")
    assert done.returncode == 0, done.stderr
    assert "Partages" in done.stdout  # curl's LIST: martin sees the shared box
    bad = await asyncio.to_thread(curl_imap, token_daemon, issuer.mint(exp=1), "--user", "martin")
    assert bad.returncode == 67, (bad.returncode, bad.stderr)  # CURLE_LOGIN_DENIED
    [row] = await token_daemon.store.audit_rows(AuditFilter(action="auth.succeeded"))
    details = json.loads(row.data)["details"]
    assert row.person == "martin" and details["mechanism"] == "OAUTHBEARER"


@pytest.mark.parametrize("engine_name", ["sqlite"])
async def test_imaplib_oauthbearer_and_xoauth2(
    token_daemon: RunningDaemon, issuer: LocalIssuer
) -> None:
    token = issuer.mint()

    def run() -> None:
        m = connect_starttls(token_daemon)
        typ, _ = m.authenticate("OAUTHBEARER", lambda _: oauthbearer(token))
        assert typ == "OK"
        ok(m.select(INBOX))
        m.logout()
        n = connect_tls(token_daemon)
        typ, _ = n.authenticate("XOAUTH2", lambda _: xoauth2(token, "martin"))
        assert typ == "OK"
        n.logout()

    await asyncio.to_thread(run)


@pytest.mark.parametrize("engine_name", ["sqlite"])
async def test_authzid_is_a_box_like_plain(
    token_daemon: RunningDaemon, issuer: LocalIssuer
) -> None:
    token = issuer.mint(LEROY_ID)

    def run() -> None:
        # leroy (replacement, read only) acts as the shared box: its INBOX is his INBOX
        m = connect_tls(token_daemon)
        typ, _ = m.authenticate("OAUTHBEARER", lambda _: oauthbearer(token, SHARED))
        assert typ == "OK"
        ok(m.select("INBOX"))
        m.logout()
        # person*box in XOAUTH2's user, as for a LOGIN
        n = connect_tls(token_daemon)
        typ, _ = n.authenticate("XOAUTH2", lambda _: xoauth2(token, f"leroy*{SHARED}"))
        assert typ == "OK"
        n.logout()
        # ...but never another person's name with one's own token
        x = connect_tls(token_daemon)
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            x.authenticate("XOAUTH2", _answers(xoauth2(token, f"martin*{SHARED}")))
        x.logout()

    await asyncio.to_thread(run)


@pytest.mark.parametrize("engine_name", ["sqlite"])
async def test_aioimaplib_xoauth2_with_sasl_ir(
    token_daemon: RunningDaemon, issuer: LocalIssuer
) -> None:
    client = aioimaplib.IMAP4_SSL(
        host="localhost",
        port=token_daemon.ports["imap-tls"],
        ssl_context=token_daemon.client_context(),
        timeout=20,
    )
    await client.wait_hello_from_server()
    response = await client.xoauth2("martin", issuer.mint())
    assert response.result == "OK", response
    selected = await client.select(INBOX)
    assert selected.result == "OK"
    await client.logout()


def _answers(first: bytes) -> Callable[[bytes], bytes]:
    """imaplib's SASL callback: `first`, then %x01 to the error challenge (RFC 7628
    §3.2.3); remembers the challenge."""
    seen: list[bytes] = []

    def answer(challenge: bytes) -> bytes:
        if seen or challenge:
            seen.append(challenge)
            return b"\x01"
        seen.append(b"")
        return first

    answer.seen = seen  # type: ignore[attr-defined]
    return answer


ATTACKS: dict[str, Callable[[LocalIssuer], str]] = {
    "expired": lambda i: i.mint(iat=1_000_000, nbf=1_000_000, exp=1_000_300),
    "not-yet-valid": lambda i: i.mint(nbf=4_000_000_000),
    "wrong-audience": lambda i: i.mint(aud="other-service", azp="other-service"),
    "wrong-issuer": lambda i: i.mint(iss="https://issuer.evil.example/realms/test"),
    "unknown-kid": lambda i: i.mint(key=new_key("never-published")),
    "alg-none": lambda i: i.mint_unsigned(),
    "hmac-confusion": lambda i: i.mint_hmac_confusion(),
    "tampered-payload": lambda i: i.tamper(i.mint(LEROY_ID), preferred_username=MARTIN_ID),
    "unknown-rpps": lambda i: i.mint("810000000001"),
}
REASONS = {
    "expired": "expired",
    "not-yet-valid": "not valid before",
    "wrong-audience": "does not name client",
    "wrong-issuer": "not the configured issuer",
    "unknown-kid": "unknown signing key id 'never-published'",
    "alg-none": "signature algorithm 'none' is not allowed",
    "hmac-confusion": "signature algorithm 'HS256' is not allowed",
    "tampered-payload": "bad signature",
    "unknown-rpps": "identifier '810000000001' names no person",
}


@pytest.mark.parametrize("engine_name", ["sqlite"])
@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_attack_refused_with_rfc7628_error(
    token_daemon: RunningDaemon, issuer: LocalIssuer, attack: str
) -> None:
    token = ATTACKS[attack](issuer)

    def run() -> list[bytes]:
        m = connect_tls(token_daemon)
        answer = _answers(oauthbearer(token))
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            m.authenticate("OAUTHBEARER", answer)
        assert "AUTH=OAUTHBEARER" in caps(m)  # still not authenticated
        m.logout()
        return answer.seen  # type: ignore[attr-defined, no-any-return]

    seen = await asyncio.to_thread(run)
    error = json.loads(seen[-1])
    assert error == {
        "status": "invalid_token",
        "scope": SCOPE,
        "openid-configuration": issuer.discovery_url,
    }
    [row] = await token_daemon.store.audit_rows(AuditFilter(action="auth.failed"))
    details = json.loads(row.data)["details"]
    assert details["mechanism"] == "OAUTHBEARER"
    assert REASONS[attack] in details["reason"]
    assert json.loads(row.data)["answer"] == "NO [AUTHENTICATIONFAILED]"


async def test_refusals_and_logins_are_audited(
    token_daemon: RunningDaemon, issuer: LocalIssuer
) -> None:
    """Both engines: a good token, an expired one, an unknown RPPS, as the trail says."""
    good, expired, stranger = issuer.mint(), ATTACKS["expired"](issuer), issuer.mint("8999")

    def run() -> None:
        for token, ok_expected in ((good, True), (expired, False), (stranger, False)):
            m = connect_tls(token_daemon)
            if ok_expected:
                assert m.authenticate("OAUTHBEARER", _answers(oauthbearer(token)))[0] == "OK"
            else:
                with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
                    m.authenticate("OAUTHBEARER", _answers(oauthbearer(token)))
            m.logout()

    await asyncio.to_thread(run)
    [success] = await token_daemon.store.audit_rows(AuditFilter(action="auth.succeeded"))
    assert success.person == "martin" and success.peer == "127.0.0.1"
    failed = await token_daemon.store.audit_rows(AuditFilter(action="auth.failed"))
    reasons = [json.loads(r.data)["details"]["reason"] for r in failed]
    assert len(reasons) == 2
    assert "expired" in reasons[0] and "'8999' names no person" in reasons[1]
    assert (await token_daemon.store.verify_audit()).ok


@pytest.mark.parametrize("engine_name", ["sqlite"])
async def test_failed_tokens_share_the_login_throttle(
    start_token_daemon: StartDaemon, issuer: LocalIssuer
) -> None:
    """A rejected token names nobody: it counts for the address (relay.identity.throttle),
    and at auth_address_failures_before_lockout (4 here) the address waits, even with a
    good token."""
    token_daemon = await start_token_daemon(limits="auth_address_failures_before_lockout = 4")
    bad, good = issuer.mint(exp=1), issuer.mint()

    def run() -> bytes:
        r = Raw(token_daemon)
        for n in range(4):
            r.send(f"A{n} AUTHENTICATE OAUTHBEARER {_b64(oauthbearer(bad))}".encode())
            assert r.line().startswith(b"+ ")
            r.send(b"AQ==")
            assert b"AUTHENTICATIONFAILED" in r.until(f"A{n} ".encode())
        r.send(f"B AUTHENTICATE OAUTHBEARER {_b64(oauthbearer(good))}".encode())
        final = r.until(b"B ")
        r.close()
        return final

    final = await asyncio.to_thread(run)
    assert final.startswith(b"B NO [UNAVAILABLE]"), final


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("engine_name", ["sqlite"])
async def test_rotated_key_is_fetched_once_not_per_login(
    token_daemon: RunningDaemon, issuer: LocalIssuer
) -> None:
    def login(token: str) -> str:
        m = connect_tls(token_daemon)
        try:
            typ, _ = m.authenticate("OAUTHBEARER", _answers(oauthbearer(token)))
        except imaplib.IMAP4.error:
            typ = "NO"
        m.logout()
        return typ

    assert await asyncio.to_thread(login, issuer.mint()) == "OK"
    assert issuer.requests["jwks"] == 1
    issuer.rotate()
    new_token = issuer.mint()  # signed by key-2, which the relay has not seen
    results = await asyncio.gather(*(asyncio.to_thread(login, new_token) for _ in range(5)))
    assert results == ["OK"] * 5
    assert issuer.requests["jwks"] == 2  # one refetch for five logins
    # made-up key ids: refused without asking the issuer again (jwks_min_refetch_seconds)
    for n in range(3):
        forged = issuer.mint(key=new_key(f"made-up-{n}"))
        assert await asyncio.to_thread(login, forged) == "NO"
    assert issuer.requests["jwks"] == 2
    freshness = token_daemon.runtime.issuer_keys.freshness()
    assert freshness.key_ids == ("key-1", "key-2") and freshness.fetches == 2


@pytest.mark.parametrize("engine_name", ["sqlite"])
async def test_keys_from_a_file_need_no_http(
    start_token_daemon: StartDaemon, issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    jwks = tmp_path_factory.mktemp("jwks") / "issuer.jwks.json"
    jwks.write_text(json.dumps({"keys": [k.as_dict(private=False) for k in issuer.keys]}))
    d = await start_token_daemon(issuer_config={"jwks_file": str(jwks)})
    token = issuer.mint()

    def run() -> str:
        m = connect_tls(d)
        typ, _ = m.authenticate("OAUTHBEARER", lambda _: oauthbearer(token))
        m.logout()
        return typ

    assert await asyncio.to_thread(run) == "OK"
    assert sum(issuer.requests.values()) == 0


@pytest.mark.parametrize("engine_name", ["sqlite"])
async def test_opaque_token_by_introspection(
    start_token_daemon: StartDaemon, issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    secret = tmp_path_factory.mktemp("secret") / "client.secret"
    secret.write_text("introspection-secret\n")
    secret.chmod(0o600)  # a secret file must not be readable by others
    d = await start_token_daemon(
        issuer_config={
            "introspection_url": f"{issuer.url}/introspect",
            "client_secret_file": str(secret),
        }
    )
    issuer.opaque["opaque-good"] = issuer.claims()
    issuer.opaque["opaque-expired"] = issuer.claims(exp=1)

    def run(token: str) -> str:
        m = connect_tls(d)
        try:
            typ, _ = m.authenticate("OAUTHBEARER", _answers(oauthbearer(token)))
        except imaplib.IMAP4.error:
            typ = "NO"
        m.logout()
        return typ

    assert await asyncio.to_thread(run, "opaque-good") == "OK"
    assert await asyncio.to_thread(run, "opaque-expired") == "NO"
    assert await asyncio.to_thread(run, "opaque-unknown") == "NO"
    assert issuer.requests["introspect"] == 3
    failed = await d.store.audit_rows(AuditFilter(action="auth.failed"))
    reasons = [json.loads(r.data)["details"]["reason"] for r in failed]
    assert "expired" in reasons[0] and reasons[1] == "introspection: token is not active"


@pytest.mark.parametrize("engine_name", ["sqlite"])
async def test_issuer_outage_refuses_says_why_and_backs_off(
    start_token_daemon: StartDaemon, issuer: LocalIssuer
) -> None:
    d = await start_token_daemon(issuer_config={"jwks_min_refetch_seconds": 1})
    issuer.broken = True
    token = issuer.mint()

    def login() -> str:
        m = connect_tls(d)
        try:
            typ, _ = m.authenticate("OAUTHBEARER", _answers(oauthbearer(token)))
        except imaplib.IMAP4.error:
            typ = "NO"
        m.logout()
        return typ

    assert await asyncio.to_thread(login) == "NO"
    assert await asyncio.to_thread(login) == "NO"
    assert issuer.requests["discovery"] == 1  # the second login did not ask again
    failed = await d.store.audit_rows(AuditFilter(action="auth.failed"))
    reasons = [json.loads(r.data)["details"]["reason"] for r in failed]
    assert all("issuer keys unavailable" in r and "HTTP 503" in r for r in reasons), reasons
    assert d.runtime.issuer_keys.freshness().last_error is not None
    issuer.broken = False
    await asyncio.sleep(1.2)  # past jwks_min_refetch_seconds: the issuer is asked again
    assert await asyncio.to_thread(login) == "OK"
    assert d.runtime.issuer_keys.freshness().last_error is None


@pytest.mark.parametrize("engine_name", ["sqlite"])
async def test_password_still_works_by_default(
    token_daemon: RunningDaemon,
) -> None:
    def run() -> None:
        m = connect_tls(token_daemon)
        m.login("dupont", PASSWORDS["dupont"])
        ok(m.select(INBOX))
        m.logout()

    await asyncio.to_thread(run)
