"""Durability: SIGKILL the daemon in the middle of a burst of concurrent submissions;
after a restart every message that got "250" is there, whole, exactly once."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import smtplib
import ssl
import threading
import time
from pathlib import Path

from relay.config import load
from relay.config.model import StorageConfig
from relay.store.store import Store
from relay.tls.pki import DevPki
from tests.harness import (
    LISTENER_NAMES,
    MARTIN_BOX,
    PASSWORDS,
    SHARED,
    free_ports,
    kill_process,
    start_process,
    write_config,
)

SESSIONS = 8
PER_SESSION = 60  # upper bound; the kill comes long before
KILL_AFTER_ACCEPTED = 40


def body(session: int, n: int) -> tuple[str, bytes]:
    mid = f"<crash-{session}-{n}@test>"
    filler = "\r\n".join([hashlib.sha256(mid.encode()).hexdigest()] * 40)  # ~2.6 KB
    data = (
        f"From: <{MARTIN_BOX}>\r\nTo: <{SHARED}>\r\nMessage-ID: {mid}\r\n"
        f"Subject: crash test {session}/{n}\r\nDate: Sun, 22 Nov 2026 06:00:00 +0100\r\n"
        f"\r\n{filler}\r\n"
    ).encode()
    return mid, data


def burst(port: int, ca: Path, accepted: list[tuple[str, bytes]], lock: threading.Lock) -> None:
    def one_session(session: int) -> None:
        ctx = ssl.create_default_context(cafile=str(ca))
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.starttls(context=ctx)
                s.login("martin", PASSWORDS["martin"])
                for n in range(PER_SESSION):
                    mid, data = body(session, n)
                    s.sendmail(MARTIN_BOX, [SHARED], data)  # raises unless 250
                    with lock:
                        accepted.append((mid, data))
        except (smtplib.SMTPException, OSError):
            return  # the kill: this message's fate is unknown to the client

    threads = [threading.Thread(target=one_session, args=(i,)) for i in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)


async def test_sigkill_mid_burst_loses_no_accepted_message(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> None:
    ports = dict(zip(LISTENER_NAMES, free_ports(len(LISTENER_NAMES)), strict=True))
    config_path = write_config(tmp_path, dev_pki, storage, ports)
    proc = await asyncio.to_thread(start_process, config_path)
    accepted: list[tuple[str, bytes]] = []
    lock = threading.Lock()
    try:
        sender = asyncio.create_task(
            asyncio.to_thread(burst, ports["submission"], dev_pki.ca_bundle, accepted, lock)
        )
        deadline = time.monotonic() + 60
        while (
            len(accepted) < KILL_AFTER_ACCEPTED
            and time.monotonic() < deadline
            and not sender.done()
        ):
            await asyncio.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        await sender
    finally:
        kill_process(proc)
    assert len(accepted) >= KILL_AFTER_ACCEPTED

    # restart: the daemon comes up on the same store (recovery, migrations) ...
    proc = await asyncio.to_thread(start_process, config_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    kill_process(proc)

    # ... and every 250'd message is there, whole, exactly once
    store = await Store.open(load(config_path).storage)
    try:
        stored = await store.messages(SHARED)
    finally:
        await store.close()
    by_id: dict[str, list[bytes]] = {}
    for m in stored:
        assert m.message_id is not None
        by_id.setdefault(m.message_id, []).append(m.raw)
    for mid, data in accepted:
        copies = by_id.get(mid.strip("<>"), [])
        assert len(copies) == 1, f"{mid}: {len(copies)} copies"
        assert copies[0].endswith(data), f"{mid}: stored message is not whole"
    # messages whose 250 was lost in the kill may be stored, but never twice
    assert all(len(v) == 1 for v in by_id.values())
    assert len(stored) >= len(accepted)
