"""SIGKILL the daemon while it is in the middle of delivering (the peer has the data,
no reply yet): after a restart the message is delivered, never lost (at-least-once)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from relay.audit.events import TrustSpaceImported
from relay.config.model import StorageConfig
from relay.store.queue import QueueStore
from relay.store.store import AuditFilter, Store, TrustEntry
from relay.tls.pki import DevPki
from tests.delivery.conftest import DR_X, FakePeer, letter, route, submit_sync, wait_until
from tests.harness import (
    LISTENER_NAMES,
    MARTIN_BOX,
    PEER_DOMAIN,
    free_ports,
    kill_process,
    start_process,
    write_config,
)

Peers = Callable[..., Awaitable[FakePeer]]


async def test_sigkill_mid_delivery_then_delivered_after_restart(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig, peers: Peers
) -> None:
    stall = asyncio.Event()
    peer = await peers("peer", stall=stall)
    ports = dict(zip(LISTENER_NAMES, free_ports(len(LISTENER_NAMES)), strict=True))
    # A short lease so that PostgreSQL (several nodes: no release at start) retries soon.
    config = write_config(
        tmp_path,
        dev_pki,
        storage,
        ports,
        limits="delivery_lease_seconds = 2\nqueue_poll_seconds = 1\n",
        extra=route(PEER_DOMAIN, peer.port),
    )
    setup = await Store.open(storage)
    await setup.trust_space_replace(
        [TrustEntry(PEER_DOMAIN, PEER_DOMAIN, dev_pki.subjects["peer"], None, None)],
        TrustSpaceImported(source="test", domains=1, generated=None),
    )
    await setup.close()

    proc = await asyncio.to_thread(start_process, config)
    try:
        code, _ = await asyncio.to_thread(
            submit_sync, ports["submission"], dev_pki.ca_bundle, [DR_X], letter(MARTIN_BOX, DR_X)
        )
        assert code == 250
        # the daemon has sent the whole message; the peer holds its reply
        await asyncio.wait_for(peer.got_data.wait(), 20)
        await asyncio.to_thread(kill_process, proc)
    except BaseException:
        await asyncio.to_thread(kill_process, proc)
        raise
    assert peer.accepted == []
    stall.set()  # the peer now answers 250 at once (the old connection is dead)
    peer.stall = None

    proc = await asyncio.to_thread(start_process, config)
    store = await Store.open(storage, migrate=False)
    try:

        async def delivered() -> bool:
            return len(peer.accepted) >= 1 and await QueueStore(store).pending() == []

        await wait_until(delivered, timeout=30, what="delivery after the restart")
        [got] = peer.accepted  # once after the restart
        assert got.rcpt_tos == [DR_X] and b"Compte rendu de consultation" in got.content
        events = await store.audit_rows(AuditFilter(action="delivery.delivered"))
        [event] = [json.loads(e.data)["details"] for e in events]
        assert event["recipient"] == DR_X and event["attempts"] == 2
    finally:
        await store.close()
        await asyncio.to_thread(kill_process, proc)
