"""Backup, restore and message key rotation through the CLI, on both engines, against a
running daemon (in-process, or a real process for the SIGKILL)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.config import load
from relay.config.model import StorageConfig
from relay.store import schema as t
from relay.store.backup import MANIFEST
from relay.store.crypto import BlobCipher, key_id, read_key_file, retired_dir
from relay.store.rotation import rotation_status
from relay.store.store import Store
from relay.tls.pki import DevPki
from tests.harness import (
    DUPONT_BOX,
    LISTENER_NAMES,
    MARTIN_BOX,
    PASSWORDS,
    free_ports,
    start_daemon,
    write_config,
)

ROTATION_LIMITS = """
key_poll_seconds = 1
key_reencrypt_batch_blobs = 1
key_reencrypt_pause_ms = 400
key_switch_grace_seconds = 1
"""


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def send(port: int, ca: Path, count: int, tag: str) -> list[bytes]:
    """`count` messages from martin to dupont in one STARTTLS session; their bodies."""
    import ssl

    bodies = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.starttls(context=ssl.create_default_context(cafile=str(ca)))
        s.login("martin", PASSWORDS["martin"])
        for i in range(count):
            body = f"Compte rendu {tag} {i}\r\n" + "ligne de texte\r\n" * (i + 1)
            msg = (
                f"From: <{MARTIN_BOX}>\r\nTo: <{DUPONT_BOX}>\r\nSubject: {tag} {i}\r\n"
                f"Message-ID: <{tag}-{i}@cabinet.example>\r\n\r\n{body}"
            )
            s.sendmail(MARTIN_BOX, [DUPONT_BOX], msg.encode())
            bodies.append(body.encode())
    return bodies


async def stored_bodies(storage: StorageConfig) -> list[bytes]:
    store = await Store.open(storage)
    try:
        return sorted(m.raw.split(b"\r\n\r\n", 1)[1] for m in await store.messages(DUPONT_BOX))
    finally:
        await store.close()


async def drop_schema(storage: StorageConfig) -> None:
    url = storage.url.replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{storage.schema}" CASCADE')
    finally:
        await conn.close()


# --- backup and restore ------------------------------------------------------------------


async def test_backup_while_running_then_restore_onto_empty(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> None:
    (tmp_path / "live").mkdir()
    d = await start_daemon(tmp_path / "live", dev_pki, storage)
    try:
        sent = await asyncio.to_thread(send, d.ports["submission"], dev_pki.ca_bundle, 5, "avant")
        backup_dir = tmp_path / "backup"
        # the daemon keeps accepting while the snapshot is taken
        sending = asyncio.create_task(
            asyncio.to_thread(send, d.ports["submission"], dev_pki.ca_bundle, 5, "pendant")
        )
        done = await asyncio.to_thread(
            cli, "backup", str(backup_dir), "--config", str(d.config_path)
        )
        during = await sending
        assert done.returncode == 0, done.stderr
        assert "backup written to" in done.stdout
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)

    manifest = json.loads((backup_dir / MANIFEST).read_text())
    assert manifest["engine"] == ("sqlite" if storage.url.startswith("sqlite") else "postgresql")
    assert {"keys/message.key", "keys/audit.key", "audit-anchors.jsonl"} <= set(manifest["files"])
    assert oct(backup_dir.stat().st_mode & 0o777) == "0o700"
    assert all(oct((backup_dir / n).stat().st_mode & 0o777) == "0o600" for n in manifest["files"])

    # the target: a new data directory (and, on PostgreSQL, the schema dropped, as after
    # losing the database server)
    target = tmp_path / "restored"
    target.mkdir()
    if storage.schema:
        await drop_schema(storage)
        new_storage = StorageConfig(
            url=storage.url, key_file=target / "data" / "blob.key", schema=storage.schema
        )
    else:
        new_storage = StorageConfig(
            url=f"sqlite+aiosqlite:///{target / 'data' / 'relay.db'}",
            key_file=target / "data" / "blob.key",
        )
    ports = dict(zip(LISTENER_NAMES, free_ports(len(LISTENER_NAMES)), strict=True))
    config = write_config(target, dev_pki, new_storage, ports)
    done = await asyncio.to_thread(cli, "restore", str(backup_dir), "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "audit verify: " in done.stdout and "OK" in done.stdout.upper()

    bodies = await stored_bodies(load(config).storage)
    # everything before the backup is there; of what came during it, a prefix may be
    assert set(sent) <= set(bodies)
    assert set(bodies) - set(sent) <= set(during)
    verify = await asyncio.to_thread(cli, "audit", "verify", "--config", str(config))
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # a second restore onto the same place is refused and says what is in the way
    again = await asyncio.to_thread(cli, "restore", str(backup_dir), "--config", str(config))
    assert again.returncode == 2
    assert "restore refused" in again.stderr and "not empty" in again.stderr
    assert "Traceback" not in again.stderr


async def test_damaged_backup_is_refused_before_anything_is_written(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> None:
    (tmp_path / "live").mkdir()
    d = await start_daemon(tmp_path / "live", dev_pki, storage)
    try:
        done = await asyncio.to_thread(
            cli, "backup", str(tmp_path / "b"), "--config", str(d.config_path)
        )
        assert done.returncode == 0, done.stderr
        refused = await asyncio.to_thread(
            cli, "backup", str(tmp_path / "b"), "--config", str(d.config_path)
        )
        assert refused.returncode == 2 and "not empty" in refused.stderr
        # a folder that cannot be made: one line, no traceback
        nowhere = await asyncio.to_thread(
            cli, "backup", "/proc/mss-relay/b", "--config", str(d.config_path)
        )
        assert nowhere.returncode == 2 and "backup failed: /proc/mss-relay" in nowhere.stderr
        assert "Traceback" not in nowhere.stderr
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)
    key = tmp_path / "b" / "keys" / "audit.key"
    key.chmod(0o600)
    key.write_bytes(bytes(32))
    target = tmp_path / "t"
    target.mkdir()
    s = StorageConfig(
        url=f"sqlite+aiosqlite:///{target / 'data' / 'r.db'}", key_file=target / "data" / "k"
    )
    config = write_config(target, dev_pki, s, dict.fromkeys(LISTENER_NAMES, 1))
    done = await asyncio.to_thread(cli, "restore", str(tmp_path / "b"), "--config", str(config))
    assert done.returncode == 2 and "damaged" in done.stderr
    assert not (target / "data").exists()


# --- key rotation ------------------------------------------------------------------------


def start_logged(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`mss-relay serve` with its output in a file (a pipe nobody reads would fill)."""
    out = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "serve", "--config", str(config)],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    deadline = time.monotonic() + 60
    while b"mss-relay: ready" not in log.read_bytes().split(b"mss-relay: listening")[-1]:
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, "daemon not ready"
        time.sleep(0.1)
    return proc


async def wait_for(check: object, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert callable(check)
        if await check():
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)


async def test_rotation_survives_sigkill_mid_reencryption(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> None:
    ports = dict(zip(LISTENER_NAMES, free_ports(len(LISTENER_NAMES)), strict=True))
    config = write_config(tmp_path, dev_pki, storage, ports, limits=ROTATION_LIMITS)
    log = tmp_path / "serve.log"
    proc = await asyncio.to_thread(start_logged, config, log)
    old_id = key_id(read_key_file(storage.key_file) or b"")
    try:
        sent = await asyncio.to_thread(send, ports["submission"], dev_pki.ca_bundle, 12, "avant")
        done = await asyncio.to_thread(cli, "key", "rotate", "--no-wait", "--config", str(config))
        assert done.returncode == 0, done.stderr
        new_id = key_id(read_key_file(storage.key_file) or b"")
        assert new_id != old_id and f"{old_id} -> {new_id}" in done.stdout
        assert read_key_file(retired_dir(storage.key_file) / f"{old_id}.key") is not None

        probe = await Store.open(storage)
        try:
            # the daemon takes the new key at once: the next message is sealed with it
            await wait_for(lambda: has_action(probe, "store.key_reloaded"))
            sent += await asyncio.to_thread(
                send, ports["submission"], dev_pki.ca_bundle, 1, "apres"
            )
            headers = await blob_key_ids(probe)
            assert headers.get(new_id, 0) >= 1

            # part of the re-encryption done, not all: SIGKILL
            async def partly() -> bool:
                remaining = (await rotation_status(probe)).remaining
                return 0 < remaining <= 9

            await wait_for(partly)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            left = (await rotation_status(probe)).remaining
            assert left > 0
        finally:
            await probe.close()

        # restart: it resumes, finishes, and retires the old key
        proc = await asyncio.to_thread(start_logged, config, log)
        probe = await Store.open(storage)
        try:

            async def finished() -> bool:
                status = await rotation_status(probe)
                return not status.retired and status.remaining == 0

            await wait_for(finished)
            assert await blob_key_ids(probe) == {new_id: 13}
            assert await has_action(probe, "store.key_rotated")
            assert await has_action(probe, "store.key_reencrypted")
        finally:
            await probe.close()
        assert not (retired_dir(storage.key_file) / f"{old_id}.key").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    # nothing lost, every blob readable with the new key alone
    assert sorted(sent) == await stored_bodies(storage)
    verify = await asyncio.to_thread(cli, "audit", "verify", "--config", str(config))
    assert verify.returncode == 0, verify.stdout + verify.stderr


async def has_action(store: Store, action: str) -> bool:
    return any(r.action == action for r in await store.audit_rows())


async def blob_key_ids(store: Store) -> dict[str, int]:
    """How many blobs each key sealed (read from the sealed headers)."""

    async def read(conn: AsyncConnection) -> list[bytes]:
        return [bytes(r[0]) for r in (await conn.execute(select(t.blobs.c.data))).all()]

    counts: dict[str, int] = {}
    for data in await store.read(read):
        kid = BlobCipher.sealed_key_id(data) or "v1"
        counts[kid] = counts.get(kid, 0) + 1
    return counts


async def test_rotate_in_the_foreground_shows_progress(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> None:
    """No daemon running: the command re-encrypts itself, with its progress."""
    d = await start_daemon(tmp_path, dev_pki, storage, limits="key_switch_grace_seconds = 1\n")
    try:
        sent = await asyncio.to_thread(send, d.ports["submission"], dev_pki.ca_bundle, 4, "x")
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)
    config = str(d.config_path)
    started = await asyncio.to_thread(cli, "key", "rotate", "--no-wait", "--config", config)
    assert started.returncode == 0, started.stderr
    # one rotation at a time: nobody re-encrypts yet, a second one is refused
    again = await asyncio.to_thread(cli, "key", "rotate", "--config", config)
    assert again.returncode == 2 and "still under way" in again.stderr
    assert "4 blob(s) to re-encrypt" in again.stderr
    done = await asyncio.to_thread(cli, "key", "rotate", "--wait", "--config", config)
    assert done.returncode == 0, done.stderr
    assert "4/4 blobs" in done.stderr and "re-encryption done" in done.stdout
    assert sorted(sent) == await stored_bodies(storage)
    assert not any(retired_dir(storage.key_file).glob("*.key"))


async def test_a_rotation_cut_before_its_rename_is_finished_at_the_next_open(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Power cut between the rotation's transaction and the rename of the key file:
    the next open does the rename, instead of refusing a key file that holds a retired
    key."""
    import relay.store.rotation as rotation

    d = await start_daemon(tmp_path, dev_pki, storage)
    try:
        sent = await asyncio.to_thread(send, d.ports["submission"], dev_pki.ca_bundle, 2, "c")
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)
    old_id = key_id(read_key_file(storage.key_file) or b"")

    def power_cut(*_: object) -> None:
        raise OSError("power cut")

    store = await Store.open(storage)
    monkeypatch.setattr(os, "replace", power_cut)  # the rename of step 4 fails
    try:
        with pytest.raises(OSError, match="power cut"):
            await rotation.rotate(store, storage, operator="test")
    finally:
        monkeypatch.undo()
        await store.close()
    assert key_id(read_key_file(storage.key_file) or b"") == old_id  # not renamed yet
    store = await Store.open(storage)
    try:
        assert store.cipher.key_id != old_id
        assert key_id(read_key_file(storage.key_file) or b"") == store.cipher.key_id
        assert not rotation.new_key_path(storage).exists()
    finally:
        await store.close()
    assert sorted(sent) == await stored_bodies(storage)
