"""An mss-relay daemon for the benchmarks: its own config in a temporary folder, every
listener on 127.0.0.1, run as a separate process (`mss-relay serve`) so that the load
client never shares its event loop or its GIL.

Listeners: submission without TLS (loopback only), submission STARTTLS, IMAP with
implicit TLS. People: `martin` (password `bench-password`) owns the shared box
`secretariat@bench.mssante.fr` and his own `martin@bench.mssante.fr`.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PG_URL = os.environ.get(
    "RELAY_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
LOGIN = "martin"
PASSWORD = "bench-password"
SHARED_BOX = "secretariat@bench.mssante.fr"
PERSONAL_BOX = "martin@bench.mssante.fr"
READY_SECONDS = 120.0


def _die_with_parent() -> None:
    """In the daemon's process before it runs: SIGTERM it when the bench that started
    it dies (prctl PR_SET_PDEATHSIG, Linux), so that a bench killed before its `with`
    block ends leaves no daemon behind (it used to: /tmp/mss-bench-* folders with
    their daemons still running). The daemon stops on SIGTERM as under systemd."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_kb(pid: int, name: str = "VmRSS") -> int:
    """A /proc/PID/status memory figure in KiB (VmRSS now, VmHWM the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{name} not in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    """Set the peak RSS (VmHWM) back to the current RSS (proc(5), clear_refs 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass
class BenchDaemon:
    """`with BenchDaemon("sqlite") as d:` starts it; leaving the block stops it and
    removes its folder (and its PostgreSQL schema)."""

    engine: str  # sqlite | postgresql
    extra_env: dict[str, str] = field(default_factory=dict)
    folder: Path = field(init=False)
    ports: dict[str, int] = field(init=False)
    ca: Path = field(init=False)
    schema: str | None = field(init=False, default=None)
    proc: subprocess.Popen[str] | None = field(init=False, default=None)

    def __enter__(self) -> BenchDaemon:
        self.folder = Path(tempfile.mkdtemp(prefix="mss-bench-"))
        self.ports = {k: free_port() for k in ("plain", "starttls", "imaps")}
        self._write_config()
        self._spawn()
        return self

    def _spawn(self) -> None:
        env = {**os.environ, **self.extra_env}
        with open(self.folder / "stderr.log", "a") as log:  # the child keeps its copy
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay.cli", "serve", "--config", str(self.config_path)],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
                preexec_fn=_die_with_parent,
            )
        ready = threading.Event()

        def watch() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                if "mss-relay: ready" in line:
                    ready.set()
            # keep reading (and dropping) so the daemon never blocks on a full pipe

        threading.Thread(target=watch, daemon=True).start()
        if not ready.wait(READY_SECONDS):
            err = (self.folder / "stderr.log").read_text(errors="replace")[-800:]
            self.__exit__(None, None, None)
            raise RuntimeError(f"mss-relay did not start within {READY_SECONDS:.0f} s: {err}")

    def _terminate(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None

    def restart(self, between: Callable[[], None] | None = None) -> None:
        """Stop the daemon, run `between()` (e.g. fill the store directly, with nothing
        else writing), start it again on the same folder, store and ports."""
        self._terminate()
        if between is not None:
            between()
        self._spawn()

    def __exit__(self, *_: object) -> None:
        self._terminate()
        if self.schema is not None:
            import asyncio

            import asyncpg

            async def drop() -> None:
                conn = await asyncpg.connect(
                    PG_URL.replace("postgresql+asyncpg://", "postgresql://")
                )
                try:
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
                finally:
                    await conn.close()

            asyncio.run(drop())
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def db_path(self) -> Path:
        return self.folder / "relay.db"

    @property
    def config_path(self) -> Path:
        return self.folder / "bench.toml"

    def _write_config(self) -> Path:
        from relay.identity.passwords import hash_password
        from relay.tls.pki import generate_dev_pki

        pki = generate_dev_pki(self.folder / "pki", "localhost")
        self.ca = pki.ca_bundle
        if self.engine == "sqlite":
            storage = f'url = "sqlite+aiosqlite:///{self.db_path}"'
        else:
            self.schema = f"bench_{secrets.token_hex(4)}"
            storage = f'url = "{PG_URL}"\nschema = "{self.schema}"'
        p = self.ports
        text = f"""
[server]
hostname = "localhost"
data_dir = "{self.folder}/data"

[storage]
{storage}
key_file = "{self.folder}/blob.key"

[tls]
certificate = "{pki.server_cert}"
key = "{pki.server_key}"
trust_anchors = ["{pki.ca_bundle}"]
crl_files = ["{pki.crl}"]

# Plain text is accepted on loopback only (the loader refuses it elsewhere).
[[listeners]]
kind = "submission"
address = "127.0.0.1:{p["plain"]}"
tls = "none"

[[listeners]]
kind = "submission"
address = "127.0.0.1:{p["starttls"]}"
tls = "starttls"

[[listeners]]
kind = "imap"
address = "127.0.0.1:{p["imaps"]}"
tls = "implicit"

[[people]]
id = "{LOGIN}"
display_name = "Dr Bench"
rpps = "10001234567"
password_hash = "{hash_password(PASSWORD)}"

[[mailboxes]]
address = "{SHARED_BOX}"
type = "ORG"
owner = "{LOGIN}"
responsible = "{LOGIN}"

[[mailboxes]]
address = "{PERSONAL_BOX}"
type = "PER"
owner = "{LOGIN}"
"""
        self.config_path.write_text(text)
        return self.config_path


def wait_for(predicate: object, seconds: float) -> bool:
    """Poll `predicate()` every 0.1 s for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False
