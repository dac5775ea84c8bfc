"""`mss-relay queue list | show | retry | bounce | delete`, run as the operator runs it
(a subprocess on the daemon's config), each action audited; a bounce gets its DSN
from the daemon."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from relay.audit.events import AuditEvent, MessageAccepted
from relay.config.model import StorageConfig
from relay.delivery.cli import OPERATOR_BOUNCE
from relay.store.queue import QueueStore
from relay.store.store import Acceptance, AuditFilter, Store
from relay.tls.pki import DevPki
from tests.delivery.conftest import delivery_status_blocks, letter, wait_until
from tests.harness import MARTIN_BOX, PEER_DOMAIN, start_daemon

X, Y, Z = (f"{n}@{PEER_DOMAIN}" for n in ("dr.x", "dr.y", "dr.z"))


def _event(queue_id: str) -> AuditEvent:
    return MessageAccepted(
        protocol="test", message_id=None, sender=MARTIN_BOX, recipients=(), size_bytes=0,
        queue_id=queue_id, box=MARTIN_BOX, person="martin",
    )  # fmt: skip


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", "queue", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_queue_commands(tmp_path: Path, dev_pki: DevPki, storage: StorageConfig) -> None:
    # a daemon creates the database and the boxes, then stops: the CLI works offline
    d = await start_daemon(tmp_path, dev_pki, storage)
    await d.daemon.stop("setup", grace_seconds=1.0)
    store = await Store.open(storage)
    ids = []
    for rcpts, mid in (((X, Y), "m1"), ((Z,), "m2")):
        result = await store.accept(
            Acceptance(
                raw=letter(MARTIN_BOX, rcpts[0], mid=mid),
                meta={},
                sender=MARTIN_BOX,
                local_recipients=(),
                remote_recipients=rcpts,
                message_id=f"{mid}@cabinet.example",
                audit=_event,
                person="martin",
                box=MARTIN_BOX,
            )
        )
        ids.append(result.queue_id)
    m1, m2 = ids
    [z_row] = [r for r in await QueueStore(store).pending() if r.recipient == Z]
    await store.close()
    config = d.config_path

    out = await asyncio.to_thread(cli, config, "list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:6] == ["ID", "QUEUE", "ID", "STATUS", "TRIES", "NEXT"]
    assert sum(1 for line in lines if " queued " in line) == 3
    assert lines[-1] == "3 recipient(s): 3 queued"

    out = await asyncio.to_thread(cli, config, "show", m1)
    assert out.returncode == 0, out.stderr
    assert f"recipient: {X}" in out.stdout and f"recipient: {Y}" in out.stdout
    assert "message-id: m1@cabinet.example" in out.stdout
    assert f"sent by: martin as {MARTIN_BOX}" in out.stdout

    out = await asyncio.to_thread(cli, config, "retry", str(z_row.id))
    assert out.returncode == 0 and Z in out.stdout

    out = await asyncio.to_thread(cli, config, "bounce", m1)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("bounced; the daemon sends the delivery report") == 2

    out = await asyncio.to_thread(cli, config, "delete", m2)
    assert out.returncode == 0 and "deleted (no delivery report)" in out.stdout

    for bad, code, message in (
        ("99999", 1, "no queue row matches 99999"),
        ("not-an-id", 2, "neither a row number nor a 16-hex-digit queue id"),
    ):
        out = await asyncio.to_thread(cli, config, "show", bad)
        assert out.returncode == code and message in out.stderr

    # every action is in the audit trail; m2's body is gone with its only row
    store = await Store.open(storage)
    try:
        events = [
            json.loads(r.data) for r in await store.audit_rows(AuditFilter(action="queue.manual"))
        ]
        assert [(e["details"]["action"], e["details"]["target"]) for e in events] == [
            ("retry", str(z_row.id)),
            ("bounce", m1),
            ("delete", m2),
        ]
        assert events[1]["details"]["recipients"] == [X, Y]
        assert all(e["details"]["operator"] for e in events)
        assert [r.status for r in await QueueStore(store).pending()] == ["bounced", "bounced"]
        assert await store.sql_scalar("SELECT count(*) FROM blobs") == 1
    finally:
        await store.close()

    # the daemon sends the bounce's DSN (both recipients in one report) and cleans up
    d = await start_daemon(tmp_path, dev_pki, storage)
    try:

        async def reported() -> bool:
            return len(await d.store.messages(MARTIN_BOX)) == 1

        await wait_until(reported, what="the DSN of the bounced message")
        [dsn] = await d.store.messages(MARTIN_BOX)
        blocks = delivery_status_blocks(dsn.raw)
        assert [(b["final-recipient"], b["status"]) for b in blocks] == [
            (f"rfc822; {X}", "5.0.0"),
            (f"rfc822; {Y}", "5.0.0"),
        ]
        assert blocks[0]["diagnostic-code"] == f"X-mss-relay; {OPERATOR_BOUNCE}"
        await wait_until(lambda: _empty(d.store), what="the queue emptied")
        out = await asyncio.to_thread(cli, config, "list")
        assert out.stdout.strip() == "queue empty"
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)


async def _empty(store: Store) -> bool:
    return await QueueStore(store).pending() == []
