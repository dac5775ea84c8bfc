"""`mss-relay serve` as systemd runs it: READY=1 on NOTIFY_SOCKET, SIGHUP reloads (a bad
file keeps the old config), SIGTERM stops cleanly. A real process, both engines."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

from relay.config.model import StorageConfig
from relay.store.store import AuditFilter, Store
from relay.tls.pki import DevPki
from tests.harness import LISTENER_NAMES, free_ports, write_config


async def audit_actions(storage: StorageConfig, action: str) -> list[dict[str, object]]:
    store = await Store.open(storage, migrate=False)
    try:
        rows = await store.audit_rows(AuditFilter(action=action))
    finally:
        await store.close()
    return [{"person": r.person, "box": r.box, **json.loads(r.data)["details"]} for r in rows]


async def wait_for(storage: StorageConfig, action: str, count: int) -> list[dict[str, object]]:
    for _ in range(100):
        rows = await audit_actions(storage, action)
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {action} in the audit trail")


def ehlo(port: int) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
        return s.ehlo("x")[0]


async def test_notify_reload_and_graceful_stop(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> None:
    ports = dict(zip(LISTENER_NAMES, free_ports(len(LISTENER_NAMES)), strict=True))
    config = write_config(tmp_path, dev_pki, storage, ports)
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "serve", "--config", str(config)],
        env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ready = await asyncio.to_thread(notify.recv, 4096)
        startup = time.monotonic() - started
        assert ready.startswith(b"READY=1")
        print(f"serve: READY=1 after {startup * 1000:.0f} ms (process start included)")
        assert await asyncio.to_thread(ehlo, ports["submission"]) == 250

        # a valid change: leroy is no longer a co-holder, dupont loses `send`
        text = config.read_text()
        text = text.replace('rights = ["read", "flag", "send"]', 'rights = ["read", "flag"]')
        leroy_block = text.index('person = "leroy"')
        start = text.rindex("[[mailboxes.coholders]]", 0, leroy_block)
        end = text.index("[[mailboxes.coholders]]", leroy_block)
        config.write_text(text[:start] + text[end:])
        proc.send_signal(signal.SIGHUP)
        assert (await asyncio.to_thread(notify.recv, 4096)).startswith(b"RELOADING=1")
        assert (await asyncio.to_thread(notify.recv, 4096)).startswith(b"READY=1")
        changes = await wait_for(storage, "config.changed", 2)
        kinds = {(c["kind"], c["person"]) for c in changes}
        assert ("coholder_removed", "leroy") in kinds
        assert ("rights_changed", "dupont") in kinds
        assert all(c["box"] == "secretariat@cpts-demo.mssante.fr" for c in changes)

        # an invalid file is refused with its errors; the daemon keeps serving
        good = config.read_text()
        config.write_text(good.replace('type = "PER"', 'type = "XYZ"', 1))
        proc.send_signal(signal.SIGHUP)
        assert (await asyncio.to_thread(notify.recv, 4096)).startswith(b"RELOADING=1")
        assert (await asyncio.to_thread(notify.recv, 4096)).startswith(b"READY=1")
        [refused] = await wait_for(storage, "config.reload_refused", 1)
        problems = refused["problems"]
        assert isinstance(problems, list)
        assert any("mailboxes[1].type" in p for p in problems)
        assert await asyncio.to_thread(ehlo, ports["submission"]) == 250

        proc.send_signal(signal.SIGTERM)
        assert (await asyncio.to_thread(notify.recv, 4096)).startswith(b"STOPPING=1")
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        proc.kill()
        proc.wait(timeout=10)
        notify.close()
    [stopped] = await audit_actions(storage, "daemon.stopped")
    assert stopped["reason"] == "signal"
    [reloaded] = await audit_actions(storage, "config.reloaded")
    assert reloaded["changes"] == 2


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify on the unit, pointed at this checkout's executable."""
    unit = Path(__file__).resolve().parent.parent / "systemd" / "mss-relay.service"
    exe = Path(sys.executable).parent / "mss-relay"
    assert exe.exists()
    copy = tmp_path / "mss-relay.service"
    copy.write_text(unit.read_text().replace("/usr/bin/mss-relay", str(exe)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line for line in (result.stdout + result.stderr).splitlines() if "mss-relay.service" in line
    ]
    assert result.returncode == 0 and problems == [], result.stdout + result.stderr
