"""`mss-relay status` shows the token issuer's JWKS freshness (issue 13, point 4):
keys, age, loads and the last error, before the first token login, after it, and
after the issuer failed a fetch. The CLI as a subprocess, the daemon in-process with
the local issuer over HTTPS; both engines."""

from __future__ import annotations

import asyncio
import imaplib

from tests.control.support import cli, cli_json
from tests.harness import RunningDaemon
from tests.issuer import LocalIssuer, oauthbearer


def token_login(d: RunningDaemon, token: str) -> str:
    m = imaplib.IMAP4_SSL(
        "localhost", d.ports["imap-tls"], ssl_context=d.client_context(), timeout=10
    )
    try:
        typ, _ = m.authenticate("OAUTHBEARER", lambda _: oauthbearer(token))
        m.logout()
        return typ
    except imaplib.IMAP4.error:
        m.shutdown()
        return "NO"


async def test_status_shows_jwks_freshness(
    token_daemon: RunningDaemon, issuer: LocalIssuer
) -> None:
    d = token_daemon
    before = (await cli_json("status", d.config_path))["issuer"]
    assert before["issuer"] == issuer.url
    assert before["keys"] == 0 and before["age_seconds"] is None and before["fetches"] == 0
    text = await cli("status", "--config", d.config_path)
    assert f"token issuer {issuer.url}: 0 keys" in text.stdout and "not loaded yet" in text.stdout

    assert await asyncio.to_thread(token_login, d, issuer.mint()) == "OK"
    loaded = (await cli_json("status", d.config_path))["issuer"]
    assert loaded["keys"] == 1 and loaded["key_ids"] == ["key-1"]
    assert loaded["source"] == f"{issuer.url}/certs"
    assert 0 <= loaded["age_seconds"] < 30 and loaded["fetches"] == 1
    assert loaded["last_error"] is None

    # the issuer goes down; a token with a key id we lack makes us ask it, in vain
    issuer.broken = True
    assert await asyncio.to_thread(token_login, d, issuer.mint(kid="key-9")) == "NO"
    failed = (await cli_json("status", d.config_path))["issuer"]
    assert failed["keys"] == 1 and failed["fetches"] == 1  # the old keys still serve
    assert "503" in failed["last_error"]
    text = await cli("status", "--config", d.config_path)
    assert "last error:" in text.stdout and "503" in text.stdout
