"""relay.upstream.connection against Debian's Dovecot as the operator: implicit TLS and
STARTTLS with the operator's certificate verified, the right and a wrong password, an
operator that is down, a certificate from an untrusted CA."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from relay.config.model import TlsMode
from relay.tls.pki import DevPki
from relay.upstream.connection import CredentialsRefused, Unreachable, open_session
from tests.harness import free_ports
from tests.upstream.conftest import BOX_PASSWORD, password_file, upstream_config
from tests.upstream.dovecot import Dovecot


@pytest.mark.parametrize("tls", [TlsMode.IMPLICIT, TlsMode.STARTTLS])
async def test_login_with_the_right_password(
    dovecot: Dovecot, dev_pki: DevPki, tmp_path: Path, tls: TlsMode
) -> None:
    up = upstream_config(dovecot, dev_pki, password=password_file(tmp_path, BOX_PASSWORD), tls=tls)
    session = await open_session("secretariat@cpts-demo.mssante.fr", up)
    try:
        assert session.client.get_state() == "AUTH"
        assert session.has("IDLE")
        assert not session.has("STARTTLS")  # capabilities re-read after TLS and login
        response = await session.client.select("INBOX")
        assert response.result == "OK"
        assert any(b"UIDVALIDITY" in line for line in response.lines)
    finally:
        await session.logout()
    assert "user=<cpts>" in dovecot.log() and "TLS" in dovecot.log()


@pytest.mark.parametrize("tls", [TlsMode.IMPLICIT, TlsMode.STARTTLS])
async def test_a_wrong_password_is_credentials_refused(
    dovecot: Dovecot, dev_pki: DevPki, tmp_path: Path, tls: TlsMode
) -> None:
    up = upstream_config(dovecot, dev_pki, password=password_file(tmp_path, "not-it"), tls=tls)
    with pytest.raises(CredentialsRefused) as refused:
        await open_session("secretariat@cpts-demo.mssante.fr", up)
    text = str(refused.value)
    assert "login cpts refused" in text and "AUTHENTICATIONFAILED" in text
    assert "not-it" not in text


async def test_an_unreadable_password_file_is_credentials_refused(
    dovecot: Dovecot, dev_pki: DevPki, tmp_path: Path
) -> None:
    up = upstream_config(dovecot, dev_pki, password=tmp_path / "missing")
    with pytest.raises(CredentialsRefused, match=r"password_file .*missing"):
        await open_session("box", up)


async def test_an_operator_that_is_down_is_unreachable(
    dovecot: Dovecot, dev_pki: DevPki, tmp_path: Path
) -> None:
    up = upstream_config(dovecot, dev_pki, password=password_file(tmp_path, BOX_PASSWORD))
    (port,) = free_ports(1)
    down = dataclasses.replace(up, imap=dataclasses.replace(up.imap, port=port))
    with pytest.raises(Unreachable, match="refused"):
        await open_session("box", down)


async def test_an_untrusted_operator_certificate_is_unreachable(
    dovecot: Dovecot, dev_pki: DevPki, tmp_path: Path
) -> None:
    up = upstream_config(dovecot, dev_pki, password=password_file(tmp_path, BOX_PASSWORD))
    rogue = dataclasses.replace(up, trust_anchors=(dev_pki.rogue_ca,))
    with pytest.raises(Unreachable, match="not trusted"):
        await open_session("box", rogue)
    # nothing was sent in clear before the handshake failed, so no login was tried
    assert "user=<cpts>" not in dovecot.log()


async def test_starttls_checks_the_certificate_before_login(
    dovecot: Dovecot, dev_pki: DevPki, tmp_path: Path
) -> None:
    up = upstream_config(
        dovecot, dev_pki, password=password_file(tmp_path, BOX_PASSWORD), tls=TlsMode.STARTTLS
    )
    rogue = dataclasses.replace(up, trust_anchors=(dev_pki.rogue_ca,))
    with pytest.raises(Unreachable, match="not trusted"):
        await open_session("box", rogue)
    assert "user=<cpts>" not in dovecot.log()


async def test_login_with_the_box_client_certificate(dev_pki: DevPki, tmp_path: Path) -> None:
    """A box reached with its certificate: AUTHENTICATE EXTERNAL, the operator taking the
    login from the certificate's CN (here a dev PKI client certificate)."""
    cert, key = dev_pki.cert_and_key("person-martin")
    cn = dev_pki.subjects["person-martin"].split(",")[0].removeprefix("CN=")
    server = Dovecot(dev_pki, {}, certificate_users=(cn,))
    server.start()
    try:
        up = upstream_config(server, dev_pki, password=None, certificate=(cert, key), login=cn)
        session = await open_session("box", up)
        try:
            assert session.client.get_state() == "AUTH"
            assert (await session.client.select("INBOX")).result == "OK"
        finally:
            await session.logout()
        assert f"user=<{cn}>, method=EXTERNAL" in server.log()
        # without a certificate the same login has no credential to offer at all
        up_no_cert = upstream_config(server, dev_pki, password=None, login=cn)
        with pytest.raises(CredentialsRefused):
            await open_session("box", up_no_cert)
    finally:
        server.cleanup()


async def test_logout_passes_on_a_cancellation_of_its_task(
    dovecot: Dovecot, dev_pki: DevPki, tmp_path: Path
) -> None:
    """The daemon stops a box's loop by cancelling it, and the loop's `finally` logs
    out. A cancellation arriving while LOGOUT waits for the operator must end the task:
    swallowed, the loop went round again and the daemon's stop waited for ever."""
    up = upstream_config(dovecot, dev_pki, password=password_file(tmp_path, BOX_PASSWORD))
    session = await open_session("secretariat@cpts-demo.mssante.fr", up)
    task = asyncio.ensure_future(session.logout())
    await asyncio.sleep(0)  # the LOGOUT is sent; its answer is not back yet
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert session.client.protocol.transport.is_closing()  # the socket closed anyway
