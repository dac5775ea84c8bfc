"""The queue SQL: claims shared by two nodes without overlap, leases, outcome tokens,
and a body deleted only when no box and no queue row needs it."""

from __future__ import annotations

import asyncio
import datetime as dt

from relay.audit.events import AuditEvent, DaemonStopped, MessageAccepted
from relay.config.model import StorageConfig
from relay.store.queue import Outcome, QueueStore
from relay.store.store import Acceptance, Store

SHARED = "secretariat@cpts-demo.mssante.fr"


def _event(queue_id: str) -> AuditEvent:
    return MessageAccepted(
        protocol="test", message_id=None, sender="s", recipients=(), size_bytes=0, queue_id=queue_id
    )


async def accept(store: Store, remote: tuple[str, ...], local: tuple[str, ...] = ()) -> str:
    result = await store.accept(
        Acceptance(
            raw=b"Subject: t\r\n\r\nbody\r\n",
            meta={},
            sender="martin@cpts-demo.mssante.fr",
            local_recipients=local,
            remote_recipients=remote,
            message_id=None,
            audit=_event,
        )
    )
    return result.queue_id


async def test_two_nodes_never_claim_the_same_row(store: Store, storage: StorageConfig) -> None:
    for n in range(40):
        await accept(store, (f"r{n}@peer.mssante.fr",))
    other = await Store.open(storage)  # a second node on the same database
    try:
        now = dt.datetime.now(dt.UTC)
        lease = now + dt.timedelta(minutes=30)
        a, b = QueueStore(store), QueueStore(other)
        results = await asyncio.gather(*(q.claim(now, lease, 7) for q in (a, b, a, b, a, b, a, b)))
        ids = [item.id for batch in results for item in batch]
        assert len(ids) == len(set(ids)) == 40  # each row once, all rows
        assert all(item.status == "sending" and item.attempts == 1 for b_ in results for item in b_)
        # nothing is due while the lease runs
        assert await a.claim(now, lease, 100) == []
        # after the lease (the node died), the rows are due again
        again = await b.claim(lease, lease + dt.timedelta(minutes=30), 100)
        assert len(again) == 40 and {i.attempts for i in again} == {2}
    finally:
        await other.close()


async def test_a_late_outcome_does_not_overwrite_a_newer_claim(store: Store) -> None:
    await accept(store, ("x@peer.mssante.fr",))
    q = QueueStore(store)
    t0 = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    [first] = await q.claim(t0, t0 + dt.timedelta(seconds=10), 10)
    [second] = await q.claim(t0 + dt.timedelta(seconds=11), t0 + dt.timedelta(minutes=5), 10)
    stale = Outcome(first, "bounced", "550 late", t0, DaemonStopped(reason="x"))
    assert await q.record([stale]) == 0
    fresh = Outcome(second, "bounced", "550 no", t0, DaemonStopped(reason="x"))
    assert await q.record([fresh]) == 1
    [row] = await q.pending()
    assert (row.status, row.last_reply, row.attempts) == ("bounced", "550 no", 2)


async def test_release_in_flight_makes_rows_due(store: Store) -> None:
    await accept(store, ("x@peer.mssante.fr",))
    q = QueueStore(store)
    t0 = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    await q.claim(t0, t0 + dt.timedelta(hours=1), 10)
    assert await q.release_in_flight(t0) == 1
    [row] = await q.pending()
    assert row.status == "deferred" and row.next_attempt_at == t0


async def test_body_kept_while_a_box_or_a_row_needs_it(store: Store) -> None:
    q = QueueStore(store)
    both = await accept(store, ("x@peer.mssante.fr", "y@peer.mssante.fr"), local=(SHARED,))
    await accept(store, ("z@peer.mssante.fr",))
    assert await store.sql_scalar("SELECT count(*) FROM blobs") == 2
    now = dt.datetime.now(dt.UTC)
    claimed = await q.claim(now, now + dt.timedelta(minutes=5), 10)
    # "both": delivered to x, refused for y; "remote_only": delivered
    await q.record(
        [
            Outcome(i, "bounced" if i.recipient.startswith("y@") else "delivered", "r", now, ev)
            for i, ev in ((i, DaemonStopped(reason="x")) for i in claimed)
        ]
    )
    # all delivered: gone with the outcome's commit, body too (no box holds it)
    assert [r.queue_id for r in await q.pending()] == [both, both]
    assert await store.sql_scalar("SELECT count(*) FROM blobs") == 1
    # a bounce leaves the message for finishing (its DSN), reserved for one node
    assert await q.finishable(now, 10) == [both]
    rows = await q.claim_finish(both, now, now + dt.timedelta(minutes=5))
    assert rows is not None and {r.status for r in rows} == {"delivered", "bounced"}
    assert await q.claim_finish(both, now, now + dt.timedelta(minutes=5)) is None
    assert await q.finishable(now, 10) == []
    await q.remove_message(both)
    assert await q.pending() == []
    # the message delivered to the shared box keeps its body; the other one is gone
    assert await store.sql_scalar("SELECT count(*) FROM blobs") == 1
    [kept] = await store.messages(SHARED)
    assert kept.raw.endswith(b"body\r\n")
