"""Debian's Dovecot as the operator's IMAP server for the replay tests: a private master
on 127.0.0.1 (config, state and Maildirs in a temporary folder; the dev PKI's server
certificate, so the client verifies it like the operator's), one fresh user (= one
hosted box) per test, and aioimaplib sessions logged in as that user.

Started once per test session; the user list is a passwd-file Dovecot re-reads when it
changes. Skips nothing: without Dovecot installed the tests fail (`.ci/run` installs
`dovecot-imapd`)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aioimaplib
import pytest

from relay.tls.pki import DevPki
from tests.harness import free_ports

USERS = 200  # boxes made before the start: Dovecot re-reads the passwd-file by mtime,
# in whole seconds, so users added at run time could go unseen.


@dataclass
class Dovecot:
    root: Path
    port: int  # implicit TLS (imaps)
    ca_bundle: Path
    users: list[tuple[str, str]]

    def add_user(self) -> tuple[str, str]:
        """A box nobody used yet."""
        if not self.users:
            raise AssertionError(f"more than {USERS} operator boxes in one test run")
        return self.users.pop()

    async def login(self, user: str, password: str) -> aioimaplib.IMAP4_SSL:
        ctx = ssl.create_default_context(cafile=str(self.ca_bundle))
        client = aioimaplib.IMAP4_SSL("localhost", self.port, ssl_context=ctx, timeout=10)
        await client.wait_hello_from_server()
        response = await client.login(user, password)
        assert response.result == "OK", response
        return client


_CONF = """
!include_try /usr/share/dovecot/protocols.d/*.protocol
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
instance_name = mss-relay-test-{token}
log_path = {root}/dovecot.log
auth_mechanisms = plain login
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={root}/home/%u
}}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = 0
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0600
  }}
}}
protocol imap {{
  mail_max_userip_connections = 100
}}
"""


@pytest.fixture(scope="session")
def dovecot(dev_pki: DevPki) -> Iterator[Dovecot]:
    # Dovecot's auth and mail processes (users dovecot, nobody) must reach the folder:
    # not under pytest's own temporary folder, which is private (0700).
    root = Path(tempfile.mkdtemp(prefix="mss-relay-dovecot-"))
    root.chmod(0o755)
    for sub in ("run", "state", "home"):
        (root / sub).mkdir()
        (root / sub).chmod(0o755)
    users = [(f"box{n:03d}", secrets.token_hex(8)) for n in range(USERS)]
    (root / "passwd").write_text(
        "".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in users), encoding="utf-8"
    )
    for u, _ in users:
        (root / "home" / u).mkdir()
        shutil.chown(root / "home" / u, "nobody", "nogroup")
    [port] = free_ports(1)
    conf = root / "dovecot.conf"
    conf.write_text(
        _CONF.format(
            root=root,
            token=secrets.token_hex(4),
            cert=dev_pki.server_cert,
            key=dev_pki.server_key,
            port=port,
        ),
        encoding="utf-8",
    )
    subprocess.run(["dovecot", "-c", str(conf)], check=True, timeout=30)
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"dovecot did not listen: {root / 'dovecot.log'}")
            time.sleep(0.05)
        yield Dovecot(root, port, dev_pki.ca_bundle, users)
    finally:
        subprocess.run(["dovecot", "-c", str(conf), "stop"], check=False, timeout=30)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class OperatorBox:
    """A fresh box (user) at the operator, and the sessions opened to it (logged out
    at the end of the test)."""

    dovecot: Dovecot
    login: str
    password: str
    sessions: list[aioimaplib.IMAP4_SSL]

    async def session(self) -> aioimaplib.IMAP4_SSL:
        client = await self.dovecot.login(self.login, self.password)
        self.sessions.append(client)
        return client


@pytest.fixture
async def operator_box(dovecot: Dovecot) -> AsyncIterator[OperatorBox]:
    user, password = dovecot.add_user()
    box = OperatorBox(dovecot, user, password, [])
    yield box
    for client in box.sessions:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.logout(), 5)
        transport = getattr(client.protocol, "transport", None)
        if transport is not None:
            transport.close()
    await asyncio.sleep(0)
