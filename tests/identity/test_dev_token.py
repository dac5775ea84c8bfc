"""`mss-relay dev-issuer` and `dev-token`: the demo's test issuer, accepted by a daemon
that reads only the public JWKS file."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relay.config.model import StorageConfig
from relay.tls.pki import DevPki
from tests.harness import start_daemon
from tests.imap.support import connect_tls
from tests.issuer import oauthbearer


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("engine_name", ["sqlite"])
async def test_dev_token_is_accepted(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> None:
    made = await asyncio.to_thread(cli, "dev-issuer", str(tmp_path / "issuer"))
    assert made.returncode == 0, made.stderr
    key = tmp_path / "issuer" / "issuer-dev.key.json"
    assert key.stat().st_mode & 0o077 == 0
    extra = f"""
[issuer]
issuer = "https://issuer.test.invalid/realms/demo"
client_id = "demo"
jwks_file = "{tmp_path / "issuer" / "issuer-dev.jwks.json"}"
dev_signing_key = "{key}"
"""
    d = await start_daemon(tmp_path, dev_pki, storage, extra=extra)
    try:
        minted = await asyncio.to_thread(cli, "dev-token", "martin", "--config", str(d.config_path))
        assert minted.returncode == 0, minted.stderr
        token = minted.stdout.strip()

        def run() -> str:
            m = connect_tls(d)
            typ, _ = m.authenticate("OAUTHBEARER", lambda _: oauthbearer(token))
            m.logout()
            return typ

        assert await asyncio.to_thread(run) == "OK"
        # dupont has neither an RPPS nor a national_id in the test config
        refused = await asyncio.to_thread(
            cli, "dev-token", "dupont", "--config", str(d.config_path)
        )
        assert refused.returncode == 2
        assert "dupont has neither an rpps nor a national_id" in refused.stderr
        assert "Traceback" not in refused.stderr
        checked = await asyncio.to_thread(cli, "check-config", str(d.config_path))
        assert "issuer keys: 1 in" in checked.stdout, checked.stdout
        (tmp_path / "issuer" / "issuer-dev.jwks.json").write_text('{"keys": 3}')
        checked = await asyncio.to_thread(cli, "check-config", str(d.config_path))
        assert "issuer.jwks_file: JWKS has no 'keys' array" in checked.stderr
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)


def test_dev_token_without_issuer_says_so(repo_root: Path) -> None:
    done = cli("dev-token", "martin", "--config", str(repo_root / "config/relay.example.toml"))
    assert done.returncode == 2 and "no [issuer] section" in done.stderr
    assert "Traceback" not in done.stderr
    demo = str(repo_root / "config/demo.toml")
    for lifetime in ("0", "100000"):
        done = cli("dev-token", "dupont", "--config", demo, "--lifetime", lifetime)
        assert done.returncode == 2 and "--lifetime must be 1 to 86400 seconds" in done.stderr


def test_demo_config_has_a_test_issuer(repo_root: Path, tmp_path: Path) -> None:
    """demo.toml in a copy of the layout `make demo` makes (its PKI in ../var/pki)."""
    (tmp_path / "config").mkdir()
    shutil.copy(repo_root / "config/demo.toml", tmp_path / "config")
    shutil.copytree(repo_root / "policies", tmp_path / "policies")
    assert cli("dev-pki", str(tmp_path / "var/pki"), "--hostname", "localhost").returncode == 0
    assert cli("dev-issuer", str(tmp_path / "var/pki")).returncode == 0
    done = cli("check-config", str(tmp_path / "config/demo.toml"))
    assert done.returncode == 0, done.stderr
    assert "tokens:     https://issuer.cpts-demo.invalid/realms/demo" in done.stdout
    assert "a TEST issuer" in done.stdout
