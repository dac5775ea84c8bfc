"""Debian's mbsync (isync) syncs a shared box over TLS into a Maildir, both ways."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness import PASSWORDS, SHARED, RunningDaemon
from tests.imap.support import deliver, letter

MBSYNC = shutil.which("mbsync")
pytestmark = pytest.mark.skipif(MBSYNC is None, reason="mbsync (isync) is not installed")


def _config(d: RunningDaemon, tmp: Path, *, user: str, far: str) -> Path:
    maildir = tmp / "Maildir"
    maildir.mkdir(exist_ok=True)
    rc = tmp / "mbsyncrc"
    rc.write_text(
        f"""
IMAPAccount relay
Host localhost
Port {d.ports["imap-tls"]}
User {user}
Pass {PASSWORDS["dupont"]}
SSLType IMAPS
CertificateFile {d.pki.ca_bundle}
SystemCertificates no
AuthMechs PLAIN

IMAPStore far
Account relay

MaildirStore near
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel shared
Far :far:"{far}"
Near :near:INBOX
Create Near
Expunge None
Sync All
SyncState *
""",
        encoding="utf-8",
    )
    return rc


def _mbsync(rc: Path) -> subprocess.CompletedProcess[str]:
    assert MBSYNC is not None
    return subprocess.run(
        [MBSYNC, "-c", str(rc), "shared"], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("how", ["shared-namespace", "person*box"])
async def test_mbsync_syncs_the_shared_box(daemon: RunningDaemon, tmp_path: Path, how: str) -> None:
    await deliver(daemon.store, SHARED, [letter(i) for i in range(1, 6)])
    if how == "shared-namespace":
        rc = _config(daemon, tmp_path, user="dupont", far=f"Partages/{SHARED}/INBOX")
    else:
        rc = _config(daemon, tmp_path, user=f"dupont*{SHARED}", far="INBOX")
    result = await asyncio.to_thread(_mbsync, rc)
    assert result.returncode == 0, result.stderr
    new = sorted((tmp_path / "Maildir" / "INBOX" / "new").iterdir())
    cur = sorted((tmp_path / "Maildir" / "INBOX" / "cur").iterdir())
    files = new + cur
    assert len(files) == 5
    # mbsync stores LF line ends and adds its own X-TUID header; the rest is intact
    bodies = sorted(
        b"".join(x for x in f.read_bytes().splitlines(True) if not x.startswith(b"X-TUID:"))
        for f in files
    )
    assert bodies == sorted(letter(i).replace(b"\r\n", b"\n") for i in range(1, 6))

    # mark one read locally (Maildir flag S): the next sync stores \Seen on the server
    first = files[0]
    target = tmp_path / "Maildir" / "INBOX" / "cur" / (first.name.split(":2,")[0] + ":2,S")
    first.rename(target)
    result = await asyncio.to_thread(_mbsync, rc)
    assert result.returncode == 0, result.stderr
    stored = await daemon.store.messages(SHARED)
    seen = await daemon.store.sql_scalar("SELECT count(*) FROM seen WHERE person = 'dupont'")
    assert len(stored) == 5 and seen == 1
