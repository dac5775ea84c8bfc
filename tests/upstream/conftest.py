"""Fixtures for gateway mode: Debian's Dovecot as the operator (tests/upstream/dovecot.py)
and the box's `[mailboxes.upstream]` pointing at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.config.model import Endpoint, TlsMode, UpstreamConfig
from relay.tls.pki import DevPki
from tests.upstream.dovecot import Dovecot, dovecot_available

BOX_LOGIN = "cpts"
BOX_PASSWORD = "operator-secret-1"


@pytest.fixture
def dovecot(dev_pki: DevPki) -> Iterator[Dovecot]:
    """A running private Dovecot with the box's account `cpts` (PLAIN password)."""
    if not dovecot_available():
        pytest.fail("dovecot-imapd is not installed (.ci/run installs it)")
    server = Dovecot(dev_pki, {BOX_LOGIN: BOX_PASSWORD})
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def password_file(directory: Path, password: str) -> Path:
    path = directory / "operator.password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def upstream_config(
    server: Dovecot,
    pki: DevPki,
    *,
    password: Path | None,
    tls: TlsMode = TlsMode.IMPLICIT,
    certificate: tuple[Path, Path] | None = None,
    login: str = BOX_LOGIN,
) -> UpstreamConfig:
    port = server.imaps_port if tls is TlsMode.IMPLICIT else server.imap_port
    return UpstreamConfig(
        imap=Endpoint(host="localhost", port=port, tls=tls),
        submission=None,
        login=login,
        password_file=password,
        certificate=certificate[0] if certificate else None,
        key=certificate[1] if certificate else None,
        trust_anchors=(pki.ca_bundle,),
        crl_files=(),
        folders=None,
        poll_interval_seconds=60,
    )
