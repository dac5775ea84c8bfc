"""`audit export --encrypt-to`: a throw-away key made with Debian's gpg decrypts it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.audit.events import AuthSucceeded
from relay.audit.export import ExportError, encrypt_to, json_lines, render_row
from relay.store.store import Store


def make_key(home: Path) -> Path:
    home.mkdir(mode=0o700)
    subprocess.run(
        [
            "gpg",
            "--homedir",
            str(home),
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-gen-key",
            "dr.martin@cpts-demo.mssante.fr",
            "ed25519",
            "cert,sign",
            "never",
        ],
        check=True,
        capture_output=True,
    )
    fpr = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--with-colons", "--list-keys"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    primary = next(line.split(":")[9] for line in fpr.splitlines() if line.startswith("fpr"))
    subprocess.run(
        [
            "gpg",
            "--homedir",
            str(home),
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-add-key",
            primary,
            "cv25519",
            "encr",
            "never",
        ],
        check=True,
        capture_output=True,
    )
    pub = home.parent / "martin.asc"
    pub.write_bytes(
        subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--armor", "--export"],
            check=True,
            capture_output=True,
        ).stdout
    )
    return pub


@pytest.fixture
def gnupg_home(tmp_path: Path) -> Iterator[Path]:
    """A GnuPG home for the test; the gpg-agent that gpg starts in it is stopped after
    (it outlived the test run otherwise)."""
    home = tmp_path / "gnupg"
    yield home
    subprocess.run(
        ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False, capture_output=True
    )


async def test_encrypted_export_decrypts_with_the_responsible_key(
    store: Store, gnupg_home: Path
) -> None:
    await store.record(
        AuthSucceeded(
            person="dupont",
            box="secretariat@cpts-demo.mssante.fr",
            peer="127.0.0.1",
            protocol="imap",
            mechanism="PLAIN",
            login="dupont",
        )
    )
    rows = await store.audit_rows()
    plain = json_lines(rows)
    home = gnupg_home
    pub = make_key(home)
    armoured, fingerprint = encrypt_to(pub, plain)
    assert armoured.startswith(b"-----BEGIN PGP MESSAGE-----")
    assert b"dupont" not in armoured
    out = subprocess.run(
        [
            "gpg",
            "--homedir",
            str(home),
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--decrypt",
        ],
        input=armoured,
        check=True,
        capture_output=True,
    ).stdout
    assert out == plain
    line = json.loads(out.splitlines()[0])
    assert line["action"] == "auth.succeeded" and line["person"] == "dupont"
    assert len(fingerprint) == 40
    assert "person=dupont" in render_row(rows[0])


def test_export_to_a_file_without_key_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-key.asc"
    bogus.write_text("hello")
    with pytest.raises(ExportError, match="no OpenPGP public key"):
        encrypt_to(bogus, b"x")
    with pytest.raises(ExportError, match="cannot read"):
        encrypt_to(tmp_path / "missing.asc", b"x")
