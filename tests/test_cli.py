"""The `mss-relay` command line, run as a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from relay.config.model import StorageConfig
from relay.identity.passwords import verify_password
from relay.tls.pki import DevPki
from tests.harness import LISTENER_NAMES, free_ports, write_config
from tests.tls.conftest import sample_whitelist_xml

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_check_config_reports_every_problem_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        """
[server]
hostname = "localhost"
colour = "blue"

[[people]]
id = "martin"
display_name = "Dr Martin"

[[mailboxes]]
address = "not an address"
type = "ORG"
responsible = "martin"
"""
    )
    result = cli("check-config", str(bad))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert f"{bad}: server.colour: unknown key" in lines
    assert any(line.startswith(f"{bad}: mailboxes[0].address: ") for line in lines)
    assert any(line.startswith(f"{bad}: mailboxes[0].responsible: ") for line in lines)


def test_serve_refuses_bad_config_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nhostname = 3\n")
    result = cli("serve", "--config", str(bad))
    assert result.returncode == 2
    assert f"{bad}: server.hostname: " in result.stderr


def test_passwd_prints_an_argon2id_hash() -> None:
    result = cli("passwd", stdin="correct horse battery\n")
    assert result.returncode == 0, result.stderr
    digest = result.stdout.strip()
    assert digest.startswith("$argon2id$")
    assert verify_password(digest, "correct horse battery")
    assert not verify_password(digest, "wrong")
    short = cli("passwd", stdin="short\n")
    assert short.returncode == 2 and "at least 8" in short.stderr


def test_ins_check_explains() -> None:
    ok = cli("ins", "check", "279035121518989")
    assert ok.returncode == 0 and "279035121518989" in ok.stdout
    bad = cli("ins", "check", "279035121518988")
    assert bad.returncode == 1
    assert "key" in bad.stdout.lower()


async def test_trust_space_import_list_and_audit(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> None:
    ports = dict(zip(LISTENER_NAMES, free_ports(len(LISTENER_NAMES)), strict=True))
    config = write_config(tmp_path, dev_pki, storage, ports)
    xml = tmp_path / "listeblanchemssante.xml"
    xml.write_bytes(
        sample_whitelist_xml(
            [
                {"Nom": "peer.mssante.fr", "DNCertificatOperateur": dev_pki.subjects["peer"]},
                {"Nom": "Santé-Armor.mssante.fr", "Description": "GHT"},
            ]
        )
    )
    imported = cli("trust-space", "import", "--config", str(config), str(xml))
    assert imported.returncode == 0, imported.stderr
    assert "2 domains imported" in imported.stdout
    listed = cli("trust-space", "list", "--config", str(config))
    assert "peer.mssante.fr" in listed.stdout
    assert "xn--sant-armor-" in listed.stdout
    shown = cli("audit", "show", "--config", str(config), "--action", "trust_space.imported")
    assert "domains=2" in shown.stdout
    verified = cli("audit", "verify", "--config", str(config))
    assert verified.returncode == 0 and verified.stdout.startswith("OK:")

    broken = tmp_path / "broken.xml"
    broken.write_bytes(b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><x/>")
    refused = cli("trust-space", "import", "--config", str(config), str(broken))
    assert refused.returncode == 2 and str(broken) in refused.stderr
    assert "peer.mssante.fr" in cli("trust-space", "list", "--config", str(config)).stdout


async def test_audit_verify_reports_tampering_with_exit_1(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> None:
    from relay.config import load
    from relay.store.store import Store

    ports = dict(zip(LISTENER_NAMES, free_ports(len(LISTENER_NAMES)), strict=True))
    config = write_config(tmp_path, dev_pki, storage, ports)
    xml = tmp_path / "wl.xml"
    xml.write_bytes(sample_whitelist_xml([{"Nom": "a.mssante.fr"}]))
    for _ in range(3):
        assert cli("trust-space", "import", "--config", str(config), str(xml)).returncode == 0
    store = await Store.open(load(config).storage)
    try:
        await store.execute_admin("UPDATE audit SET peer = '10.6.6.6' WHERE seq = 2")
    finally:
        await store.close()
    result = cli("audit", "verify", "--config", str(config))
    assert result.returncode == 1
    assert result.stdout.startswith("BROKEN at row 2:")
