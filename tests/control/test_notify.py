"""`mss-relay serve` as systemd runs it, reloaded through `mss-relay reload` (the
unit's ExecReload): RELOADING=1 with MONOTONIC_USEC, then READY=1, whether the file is
applied or refused; WATCHDOG=1 pings when WATCHDOG_USEC is set. A real process, both
engines (reloads are audited)."""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from relay.config.model import StorageConfig
from relay.tls.pki import DevPki
from tests.control.support import cli
from tests.harness import LISTENER_NAMES, free_ports, write_config


class Notifications:
    """The datagrams a daemon sends to NOTIFY_SOCKET, read at once by a thread (as
    systemd does: a full queue would block the sender), WATCHDOG=1 counted apart."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.watchdog = 0
        self.messages: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            if message == "WATCHDOG=1":
                self.watchdog += 1
            else:
                self.messages.put(message)

    def next(self) -> str:
        return self.messages.get(timeout=30)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


async def test_reload_command_notifies_systemd_and_watchdog_pings(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> None:
    ports = dict(zip(LISTENER_NAMES, free_ports(len(LISTENER_NAMES)), strict=True))
    config = write_config(tmp_path, dev_pki, storage, ports)
    notify = Notifications(tmp_path / "notify.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "serve", "--config", str(config)],
        env={
            **os.environ,
            "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
            "WATCHDOG_USEC": "200000",  # a ping every 0.1 s
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert (await asyncio.to_thread(notify.next)).startswith("READY=1")

        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        done = await cli("reload", "--config", config)
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert done.returncode == 0, done.stdout + done.stderr
        assert "no change" in done.stdout
        reloading = await asyncio.to_thread(notify.next)
        fields = dict(line.split("=", 1) for line in reloading.split("\n"))
        assert fields["RELOADING"] == "1"
        assert before <= int(fields["MONOTONIC_USEC"]) <= after  # sd_notify(3): CLOCK_MONOTONIC
        assert (await asyncio.to_thread(notify.next)).startswith("READY=1")

        # a refused reload: systemctl reload fails (exit 2), the daemon is READY again
        config.write_text(config.read_text().replace('type = "PER"', 'type = "XYZ"', 1))
        refused = await cli("reload", "--config", config)
        assert refused.returncode == 2 and "mailboxes[1].type" in refused.stdout
        assert (await asyncio.to_thread(notify.next)).startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert (await asyncio.to_thread(notify.next)).startswith("READY=1")

        pings = notify.watchdog
        await asyncio.sleep(0.5)
        proc.terminate()
        assert (await asyncio.to_thread(notify.next)).startswith("STOPPING=1")
        assert notify.watchdog >= pings + 2, (pings, notify.watchdog)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        proc.kill()
        proc.wait(timeout=10)
        notify.close()
