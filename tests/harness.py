"""A real daemon for end-to-end tests: config file written from the dev PKI, listeners
on free 127.0.0.1 ports, started in-process (or as a subprocess for crash tests)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from relay.app import Daemon, load_for_serving
from relay.audit.chain import AuditRow
from relay.config.model import StorageConfig
from relay.identity.passwords import hash_password
from relay.runtime import Runtime
from relay.store.store import AuditFilter, Store, TrustEntry
from relay.tls.pki import DevPki

DOMAIN = "cpts-demo.mssante.fr"
SHARED = f"secretariat@{DOMAIN}"
MARTIN_BOX = f"martin@{DOMAIN}"
DUPONT_BOX = f"dupont@{DOMAIN}"
PEER_DOMAIN = "peer.mssante.fr"
PASSWORDS = {
    "martin": "martin-secret",
    "dupont": "dupont-secret",
    "leroy": "leroy-secret",
    "ancien": "ancien-secret",
}
LISTENER_NAMES = ("submission", "submission-tls", "inbound", "imap", "imap-tls")


@functools.cache
def password_hash(person: str) -> str:
    return hash_password(PASSWORDS[person])


# Ports for the daemons tests start are taken below the kernel's ephemeral range
# (/proc/sys/net/ipv4/ip_local_port_range, 32768-60999 by default): a port picked
# there with bind(0) can be taken by any outgoing connection (a PostgreSQL client, an
# HTTP fetch) before the daemon binds it, and on a loaded machine that happened.
# Each test process walks the range from its own random start, so two test runs on
# one machine rarely meet; a port that is in use is skipped. The workers of one
# `pytest -n N` run (pytest-xdist: PYTEST_XDIST_WORKER gw0..gwN-1) each walk their own
# slice of the range: a port one worker found free and has not bound yet is never
# handed to another.
def _port_range() -> tuple[int, int]:
    low, high = 20000, 30000
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2:
        return low, high
    size = (high - low) // count
    low += int(worker[2:]) * size
    return low, low + size


_PORT_RANGE = _port_range()
_next_port = _PORT_RANGE[0] + secrets.randbelow(_PORT_RANGE[1] - _PORT_RANGE[0])


def free_ports(n: int) -> list[int]:
    """`n` distinct 127.0.0.1 TCP ports that are free now and that no outgoing
    connection will be given meanwhile."""
    global _next_port
    ports: list[int] = []
    low, high = _PORT_RANGE
    for _ in range(high - low):
        if len(ports) == n:
            break
        port = _next_port
        _next_port = low + (_next_port + 1 - low) % (high - low)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    if len(ports) < n:
        raise RuntimeError(f"no {n} free ports in {low}-{high}")
    return ports


def _q(value: str | Path) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(
    directory: Path,
    pki: DevPki,
    storage: StorageConfig,
    ports: dict[str, int],
    *,
    limits: str = "",
    extra: str = "",
    server_extra: str = "",
    today: dt.date | None = None,
    shared_box_extra: str = "",
    person_extra: dict[str, str] | None = None,
) -> Path:
    """The test config: martin (doctor, owner), dupont (secretary: read, flag, send),
    leroy (replacement: read only, valid now), ancien (former replacement whose window
    ended yesterday: read, send)."""
    today = today or dt.date.today()
    storage_lines = [f"url = {_q(storage.url)}", f"key_file = {_q(storage.key_file)}"]
    if storage.schema:
        storage_lines.append(f"schema = {_q(storage.schema)}")
    martin_cert = pki.fingerprints["person-martin"]
    more = person_extra or {}
    text = f"""
[server]
hostname = "localhost"
data_dir = {_q(directory / "data")}
{server_extra}

[storage]
{chr(10).join(storage_lines)}

[tls]
certificate = {_q(pki.server_cert)}
key = {_q(pki.server_key)}
trust_anchors = [{_q(pki.ca_bundle)}]
crl_files = [{_q(pki.crl)}]

[[listeners]]
kind = "submission"
address = "127.0.0.1:{ports["submission"]}"
tls = "starttls"

[[listeners]]
kind = "submission"
address = "127.0.0.1:{ports["submission-tls"]}"
tls = "implicit"

[[listeners]]
kind = "inbound"
address = "127.0.0.1:{ports["inbound"]}"
tls = "starttls"

[[listeners]]
kind = "imap"
address = "127.0.0.1:{ports["imap"]}"
tls = "starttls"

[[listeners]]
kind = "imap"
address = "127.0.0.1:{ports["imap-tls"]}"
tls = "implicit"

[[people]]
id = "martin"
display_name = "Dr Claire Martin"
rpps = "10001234567"
profession = "médecin"
password_hash = {_q(password_hash("martin"))}
certificate_fingerprints = [{_q(martin_cert)}]
{more.get("martin", "")}

[[people]]
id = "dupont"
display_name = "Marie Dupont"
profession = "secrétaire médicale"
password_hash = {_q(password_hash("dupont"))}
{more.get("dupont", "")}

[[people]]
id = "leroy"
display_name = "Dr Paul Leroy"
rpps = "10009876543"
profession = "médecin remplaçant"
password_hash = {_q(password_hash("leroy"))}
{more.get("leroy", "")}

[[people]]
id = "ancien"
display_name = "Dr Ancien Remplaçant"
rpps = "10005555555"
password_hash = {_q(password_hash("ancien"))}

[[mailboxes]]
address = "{SHARED}"
type = "ORG"
owner = "martin"
responsible = "martin"
seen = "per-person"
{shared_box_extra}

[[mailboxes.coholders]]
person = "dupont"
rights = ["read", "flag", "send"]

[[mailboxes.coholders]]
person = "leroy"
rights = ["read"]
valid_from = {today - dt.timedelta(days=30)}
valid_until = {today + dt.timedelta(days=30)}

[[mailboxes.coholders]]
person = "ancien"
rights = ["read", "send"]
valid_from = {today - dt.timedelta(days=60)}
valid_until = {today - dt.timedelta(days=1)}

[[mailboxes]]
address = "{MARTIN_BOX}"
type = "PER"
owner = "martin"

[[mailboxes]]
address = "{DUPONT_BOX}"
type = "PER"
owner = "dupont"

[limits]
auth_failures_before_lockout = 4
auth_lockout_seconds = 60
{limits}
{extra}
"""
    path = directory / "relay.toml"
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class RunningDaemon:
    daemon: Daemon
    runtime: Runtime
    ports: dict[str, int]
    config_path: Path
    pki: DevPki

    @property
    def store(self) -> Store:
        return self.runtime.store

    def client_context(self, cert: str | None = None) -> ssl.SSLContext:
        """A client TLS context trusting the dev CA, presenting `cert` if given."""
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_bundle))
        if cert is not None:
            chain, key = self.pki.cert_and_key(cert)
            ctx.load_cert_chain(str(chain), str(key))
        return ctx

    async def audit_rows_settled(
        self, flt: AuditFilter, *, count: int = 1, timeout: float = 10.0
    ) -> list[AuditRow]:
        """The audit rows matching `flt` once there are `count` of them. An SMTP AUTH is
        answered 235 before its audit event commits (the session's first message waits
        for that commit), so a session that sends nothing is read after it settles."""
        deadline = time.monotonic() + timeout
        while True:
            rows = await self.store.audit_rows(flt)
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.02)

    async def trust_peer(
        self, *, dn: str | None = None, domain: str = PEER_DOMAIN, listed_dn: bool = True
    ) -> None:
        """List `domain` in the trust space with `dn` (default: the dev PKI's peer
        certificate), or with no DN at all when `listed_dn` is False."""
        from relay.audit.events import TrustSpaceImported

        if not listed_dn:
            dn = None
        elif dn is None:
            dn = self.pki.subjects["peer"]

        await self.store.trust_space_replace(
            [
                TrustEntry(
                    domain=domain,
                    name=domain,
                    certificate_dn=dn,
                    description="test operator",
                    updated=None,
                )
            ],
            TrustSpaceImported(source="test", domains=1, generated=None),
        )


async def start_daemon(
    directory: Path,
    pki: DevPki,
    storage: StorageConfig,
    *,
    limits: str = "",
    extra: str = "",
    server_extra: str = "",
    shared_box_extra: str = "",
    person_extra: dict[str, str] | None = None,
) -> RunningDaemon:
    ports = dict(zip(LISTENER_NAMES, free_ports(len(LISTENER_NAMES)), strict=True))
    path = write_config(
        directory,
        pki,
        storage,
        ports,
        limits=limits,
        extra=extra,
        server_extra=server_extra,
        shared_box_extra=shared_box_extra,
        person_extra=person_extra,
    )
    daemon = Daemon(path, load_for_serving(path))
    runtime = await daemon.start()
    return RunningDaemon(daemon, runtime, ports, path, pki)


@contextlib.asynccontextmanager
async def daemon_running(
    directory: Path, pki: DevPki, storage: StorageConfig, **options: Any
) -> AsyncIterator[RunningDaemon]:
    """`start_daemon` (same options), stopped when the block ends."""
    running = await start_daemon(directory, pki, storage, **options)
    try:
        yield running
    finally:
        await running.daemon.stop("test finished", grace_seconds=1.0)


def daemon_fixture(**options: Any) -> Any:
    """A pytest fixture (bind it to a name in the test module) giving a daemon started
    with `start_daemon`'s `options` (limits=..., extra=...), stopped after the test."""

    @pytest.fixture
    async def fixture(
        tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
    ) -> AsyncIterator[RunningDaemon]:
        async with daemon_running(tmp_path, dev_pki, storage, **options) as running:
            yield running

    return fixture


def start_process(
    config: Path, *, stderr: IO[str] | int = subprocess.DEVNULL
) -> subprocess.Popen[str]:
    """`mss-relay serve` as a real process; returns once it printed that it is ready.
    Its log (JSON lines on stderr) goes to `stderr`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "mss-relay: ready" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("daemon did not become ready")


def kill_process(proc: subprocess.Popen[str]) -> None:
    """SIGKILL: no shutdown code runs."""
    proc.kill()
    proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()
