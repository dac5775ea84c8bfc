"""Debian's Dovecot as the MSSanté operator's IMAP service, for gateway-mode tests.

A private instance (its own config, base_dir, maildirs and passwd-file, as
/work/shared/reference/dovecot-ref.sh does), listening on 127.0.0.1 free ports only:
imaps (implicit TLS) and imap (STARTTLS). Its server certificate is the dev PKI's
(issued by the test intermediate for localhost/127.0.0.1), so our client verifies it
against the dev trust anchors exactly as it would an IGC-Santé one. Client
certificates issued by the dev PKI log in with AUTHENTICATE EXTERNAL, the
certificate's CN being the user name.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from relay.tls.pki import DevPki
from tests.harness import free_ports

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
MAIL_USER = "nobody"
MAIL_GROUP = "nogroup"


def dovecot_available() -> bool:
    return os.path.exists(DOVECOT) and os.path.exists("/usr/lib/dovecot/imap")


@dataclass
class Dovecot:
    """One private Dovecot. `users` maps login -> PLAIN password."""

    pki: DevPki
    users: dict[str, str]
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dovecot-up-")))
    imap_port: int = 0
    imaps_port: int = 0
    extra_conf: str = ""
    # logins that authenticate with their client certificate's CN (SASL EXTERNAL)
    certificate_users: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Dovecot's unprivileged processes (mail as nobody) must traverse the tree:
        # pytest's tmp_path is 0700, so the instance lives in its own /tmp folder.
        os.chmod(self.root, 0o755)  # noqa: S103 (see above)
        if not self.imap_port:
            self.imap_port, self.imaps_port = free_ports(2)

    @property
    def conf(self) -> Path:
        return self.root / "dovecot.conf"

    def maildir(self, user: str) -> Path:
        return self.root / "home" / user / "Maildir"

    def write_config(self) -> None:
        r = self.root
        for d in ("run", "state", "home"):
            (r / d).mkdir(exist_ok=True)
            os.chmod(r / d, 0o755)  # noqa: S103 (nobody traverses it)
        lines = []
        for user, password in self.users.items():
            lines.append(f"{user}:{{PLAIN}}{password}::::::")
            home = r / "home" / user
            home.mkdir(exist_ok=True)
            shutil.chown(home, MAIL_USER, MAIL_GROUP)
        (r / "passwd").write_text("\n".join(lines) + "\n")
        (r / "certusers").write_text(
            "".join(f"{u}:::::::nopassword\n" for u in self.certificate_users)
        )
        for user in self.certificate_users:
            home = r / "home" / user
            home.mkdir(exist_ok=True)
            shutil.chown(home, MAIL_USER, MAIL_GROUP)
        os.chmod(r / "certusers", 0o644)
        os.chmod(r / "passwd", 0o644)
        # Dovecot reads its key as root before dropping privileges; a copy keeps the
        # dev PKI's own file untouched.
        shutil.copy(self.pki.server_cert, r / "cert.pem")
        shutil.copy(self.pki.server_key, r / "key.pem")
        os.chmod(r / "key.pem", 0o600)
        shutil.copy(self.pki.ca_bundle, r / "ca.pem")
        self.conf.write_text(f"""
!include_try /usr/share/dovecot/protocols.d/*.protocol
protocols = imap
listen = 127.0.0.1
base_dir = {r}/run
state_dir = {r}/state
instance_name = dovecot-up-{self.imap_port}
log_path = {r}/dovecot.log
info_log_path = {r}/dovecot.log
auth_verbose = yes
auth_verbose_passwords = no
auth_mechanisms = plain login external
auth_failure_delay = 0
disable_plaintext_auth = yes
ssl = yes
ssl_cert = <{r}/cert.pem
ssl_key = <{r}/key.pem
ssl_ca = <{r}/ca.pem
ssl_verify_client_cert = yes
ssl_require_crl = no
ssl_cert_username_field = commonName
auth_ssl_username_from_cert = yes
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u {r}/passwd
}}
# certificate users: the TLS-verified certificate is the credential (EXTERNAL only)
passdb {{
  driver = passwd-file
  mechanisms = external
  args = username_format=%u {r}/certusers
}}
userdb {{
  driver = static
  args = uid={MAIL_USER} gid={MAIL_GROUP} home={r}/home/%u
}}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.imaps_port}
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
  mail_max_userip_connections = 1000
}}
{self.extra_conf}
""")

    def start(self) -> None:
        self.write_config()
        subprocess.run([DOVECOT, "-c", str(self.conf)], check=True, timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.imaps_port), timeout=1),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"dovecot did not listen on {self.imaps_port}: {self.log()}")

    def _master(self) -> int | None:
        """The master's pid while it is alive (a zombie is not: nobody reaps it here)."""
        pid = self.root / "run" / "master.pid"
        try:
            n = int(pid.read_text().strip())
            state = Path(f"/proc/{n}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return None
        return None if state in ("Z", "X") else n

    def running(self) -> bool:
        return self._master() is not None

    def stop(self) -> None:
        """Kill this instance (the master and its children) at once: a graceful
        SIGTERM takes Dovecot about 6 s, and an operator that dies abruptly is what the
        fault tests want anyway. Only processes whose parent is our master are
        signalled."""
        master = self._master()
        if master is None:
            return
        children = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                ppid = int(proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == master:
                children.append(int(proc.name))
        os.kill(master, signal.SIGKILL)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.02)
        (self.root / "run" / "master.pid").unlink(missing_ok=True)
        # the listeners die with the processes; wait until the ports refuse
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.imaps_port), timeout=0.2):
                    pass
            except OSError:
                return
            time.sleep(0.02)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    # --- a direct client, for the tests to act as the operator's webmail ---------------

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_bundle))
        return ctx

    @contextlib.contextmanager
    def imap(self, user: str) -> Iterator[imaplib.IMAP4_SSL]:
        conn = imaplib.IMAP4_SSL(
            "127.0.0.1", self.imaps_port, ssl_context=self.client_context(), timeout=10
        )
        try:
            conn.login(user, self.users[user])
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def seed(self, user: str, messages: Sequence[bytes]) -> None:
        """Put `messages` straight into the user's Maildir (as a delivery agent would,
        much faster than APPEND), then let Dovecot index them once."""
        md = self.maildir(user)
        for sub in ("cur", "new", "tmp"):
            (md / sub).mkdir(parents=True, exist_ok=True)
        stamp = int(time.time())
        for i, raw in enumerate(messages):
            (md / "cur" / f"{stamp}.M{i}P1.seed,S={len(raw)}:2,").write_bytes(raw)
        for path in [md, *md.rglob("*")]:
            shutil.chown(path, MAIL_USER, MAIL_GROUP)
        with self.imap(user) as conn:
            typ, data = conn.select("INBOX", readonly=True)
            assert typ == "OK", data
            conn.uid("FETCH", "1:*", "(FLAGS RFC822.SIZE)")

    def append(
        self, user: str, message: bytes, folder: str = "INBOX", flags: Sequence[str] = ()
    ) -> None:
        with self.imap(user) as conn:
            typ, data = conn.append(
                folder, "(" + " ".join(flags) + ")" if flags else None, None, message
            )
            assert typ == "OK", data
