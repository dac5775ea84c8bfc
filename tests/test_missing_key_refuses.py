"""Issue 9 item 3: no command but `key init` and the first start of an empty store
creates a key; any other open with a missing or wrong key refuses and says why.

Before: `audit show` or `queue list` with the key file missing silently made a new
`blob.key`; the daemon then started and every FETCH failed. Every command here runs as
a real process, on both engines.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from relay.config import load
from relay.config.model import StorageConfig
from relay.store.crypto import create_key_file, key_id, read_key_file
from relay.store.store import Store
from relay.tls.pki import DevPki
from tests.harness import LISTENER_NAMES, free_ports, write_config
from tests.store.test_store import BOX, acceptance

REPO = Path(__file__).resolve().parent.parent
# A few of the commands that only read (each runs as a process: a few seconds apiece).
READ_ONLY = (("audit", "show"), ("queue", "list"), ("patients", "list", BOX))


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


@pytest.fixture
def config(tmp_path: Path, dev_pki: DevPki, storage: StorageConfig) -> Path:
    ports = dict(zip(LISTENER_NAMES, free_ports(len(LISTENER_NAMES)), strict=True))
    return write_config(tmp_path, dev_pki, storage, ports)


def remove_keys(storage: StorageConfig) -> None:
    storage.key_file.unlink()
    storage.audit_key_path.unlink()


async def store_with_a_message(config: Path) -> None:
    store = await Store.open(load(config).storage)
    try:
        await store.ensure_mailboxes([BOX, "martin@cpts-demo.mssante.fr"])
        await store.accept(acceptance(1))
    finally:
        await store.close()


def test_read_only_commands_on_a_new_store_create_no_key(
    config: Path, storage: StorageConfig
) -> None:
    remove_keys(storage)
    for command in READ_ONLY:
        result = cli(*command, "--config", str(config))
        refused(result, str(storage.key_file), "no message key yet", "mss-relay key init")
        assert not storage.key_file.exists(), command
        assert not storage.audit_key_path.exists(), command


def test_key_init_creates_both_keys_once(config: Path, storage: StorageConfig) -> None:
    remove_keys(storage)
    made = cli("key", "init", "--config", str(config))
    assert made.returncode == 0, made.stderr
    for path in (storage.key_file, storage.audit_key_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        key = read_key_file(path)
        assert key is not None and f"{key_id(key)}  {path}  (created)" in made.stdout
    assert "Back up these key files now" in made.stdout
    blob = storage.key_file.read_bytes()
    again = cli("key", "init", "--config", str(config))
    assert again.returncode == 0 and again.stdout.count("(in place)") == 2
    assert storage.key_file.read_bytes() == blob
    shown = cli("audit", "show", "--config", str(config), "--action", "store.key_created")
    assert shown.returncode == 0 and shown.stdout.count("store.key_created") == 2


async def test_missing_key_with_messages_refuses_every_command(
    config: Path, storage: StorageConfig
) -> None:
    await store_with_a_message(config)
    kid = key_id(storage.key_file.read_bytes())
    storage.key_file.unlink()
    for command in (*READ_ONLY, ("key", "init")):
        result = cli(*command, "--config", str(config))
        refused(result, str(storage.key_file), "missing", kid, "key backup")
        assert not storage.key_file.exists(), command
    served = cli("serve", "--config", str(config))
    refused(served, "cannot start", "missing", kid)
    assert not storage.key_file.exists()


async def test_wrong_key_is_named(config: Path, storage: StorageConfig) -> None:
    await store_with_a_message(config)
    right = key_id(storage.key_file.read_bytes())
    storage.key_file.unlink()
    wrong = key_id(create_key_file(storage.key_file))
    for command in (("queue", "list"), ("audit", "show"), ("serve",)):
        result = cli(*command, "--config", str(config))
        refused(result, "wrong message key", f"holds key {wrong}", f"sealed with key {right}")


async def test_first_start_of_an_empty_store_creates_the_keys(
    config: Path, storage: StorageConfig
) -> None:
    from tests.harness import kill_process, start_process

    remove_keys(storage)
    proc = start_process(config)
    kill_process(proc)
    assert read_key_file(storage.key_file) is not None
    assert read_key_file(storage.audit_key_path) is not None
    listed = cli("queue", "list", "--config", str(config))
    assert listed.returncode == 0, listed.stderr


async def test_missing_or_wrong_audit_key_refuses(config: Path, storage: StorageConfig) -> None:
    await store_with_a_message(config)
    audit_id = key_id(storage.audit_key_path.read_bytes())
    storage.audit_key_path.unlink()
    refused(cli("audit", "verify", "--config", str(config)), "audit key file is missing", audit_id)
    refused(cli("serve", "--config", str(config)), "audit key file is missing")
    assert not storage.audit_key_path.exists()
    create_key_file(storage.audit_key_path)
    refused(cli("audit", "verify", "--config", str(config)), "wrong audit key", audit_id)


async def test_key_readable_by_others_refused(config: Path, storage: StorageConfig) -> None:
    os.chmod(storage.key_file, 0o640)
    refused(cli("queue", "list", "--config", str(config)), "accessible to group or others")


async def test_store_from_before_fingerprints_takes_its_key_after_a_check(
    config: Path, storage: StorageConfig
) -> None:
    """An installation that ran before key fingerprints: its key is checked against a
    stored message, then registered; a wrong key is refused."""
    await store_with_a_message(config)
    store = await Store.open(load(config).storage)
    try:
        await store.execute_admin("DELETE FROM store_keys")
    finally:
        await store.close()
    right = storage.key_file.read_bytes()
    storage.key_file.unlink()
    create_key_file(storage.key_file)
    refused(
        cli("queue", "list", "--config", str(config)),
        "does not open the messages already in the store",
    )
    storage.key_file.unlink()
    refused(cli("queue", "list", "--config", str(config)), "already holds messages")
    fd = os.open(storage.key_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, right)
    os.close(fd)
    listed = cli("queue", "list", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    shown = cli("audit", "show", "--config", str(config), "--action", "store.key_registered")
    assert shown.stdout.count("store.key_registered") == 2
