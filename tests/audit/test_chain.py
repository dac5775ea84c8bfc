"""The audit hash chain catches a modified, a deleted, a reordered and a truncated row,
on both engines, through the store (the rows are tampered with by raw SQL)."""

from __future__ import annotations

import json

import pytest

from relay.audit.chain import AuditRow, verify
from relay.audit.events import (
    AuditEvent,
    AuthFailed,
    ConfigChanged,
    MessageRefused,
    action_names,
)
from relay.store.store import AuditFilter, Store


def events(n: int) -> list[AuditEvent]:
    return [
        AuthFailed(
            person=None,
            peer=f"127.0.0.{i}",
            protocol="imap",
            mechanism="PLAIN",
            login=f"user{i}",
            reason="bad password",
            request="AUTHENTICATE PLAIN",
            answer="NO [AUTHENTICATIONFAILED]",
        )
        for i in range(1, n + 1)
    ]


async def verify_store(store: Store) -> tuple[bool, int | None, str]:
    result = await store.verify_audit()
    return result.ok, result.first_broken_seq, str(result)


async def test_intact_chain_verifies(store: Store) -> None:
    await store.record(*events(5))
    ok, broken, text = await verify_store(store)
    assert (ok, broken) == (True, None)
    assert text.startswith("OK: 5 audit rows, chain intact\n  note: no anchor file")
    assert await store.anchor("test") is not None
    assert await store.anchor("test") is None  # the same head is anchored once
    _, _, text = await verify_store(store)
    assert text.startswith("OK: 5 audit rows, chain intact; agrees with 1 anchor(s)")


async def test_modified_row_is_caught(store: Store) -> None:
    await store.record(*events(5))
    await store.execute_admin("UPDATE audit SET person = 'someone-else' WHERE seq = 3")
    ok, broken, text = await verify_store(store)
    assert (ok, broken) == (False, 3)
    assert "modified" in text


async def test_modified_details_are_caught(store: Store) -> None:
    await store.record(*events(4))
    row = (await store.audit_rows())[1]
    data = json.loads(row.data)
    data["details"]["login"] = "innocent"
    await store.execute_admin("UPDATE audit SET data = :d WHERE seq = 2", {"d": json.dumps(data)})
    ok, broken, _ = await verify_store(store)
    assert (ok, broken) == (False, 2)


async def test_deleted_row_is_caught(store: Store) -> None:
    await store.record(*events(5))
    await store.execute_admin("DELETE FROM audit WHERE seq = 2")
    ok, broken, text = await verify_store(store)
    assert (ok, broken) == (False, 2)
    assert "missing" in text


async def test_deleted_row_with_renumbering_is_caught(store: Store) -> None:
    """A careful attacker deletes row 2 and renumbers the rest: the links break."""
    await store.record(*events(5))
    await store.execute_admin("DELETE FROM audit WHERE seq = 2")
    for seq in (3, 4, 5):
        await store.execute_admin(
            "UPDATE audit SET seq = :new WHERE seq = :old", {"new": seq - 1, "old": seq}
        )
    await store.execute_admin("UPDATE audit_head SET seq = 4")
    ok, broken, _ = await verify_store(store)
    assert (ok, broken) == (False, 2)


async def test_reordered_rows_are_caught(store: Store) -> None:
    await store.record(*events(5))
    # swap rows 2 and 4 (their sequence numbers), via a free number
    await store.execute_admin("UPDATE audit SET seq = 1000 WHERE seq = 2")
    await store.execute_admin("UPDATE audit SET seq = 2 WHERE seq = 4")
    await store.execute_admin("UPDATE audit SET seq = 4 WHERE seq = 1000")
    ok, broken, _ = await verify_store(store)
    assert (ok, broken) == (False, 2)


async def test_removed_newest_rows_are_caught(store: Store) -> None:
    await store.record(*events(5))
    await store.execute_admin("DELETE FROM audit WHERE seq >= 4")
    ok, broken, text = await verify_store(store)
    assert (ok, broken) == (False, 4)
    assert "newest rows removed" in text


async def test_chain_continues_across_batches_and_filters(store: Store) -> None:
    await store.record(*events(2))
    await store.record(
        ConfigChanged(
            box="secretariat@cpts-demo.mssante.fr",
            person="leroy",
            kind="coholder_removed",
            detail="leroy no longer co-holds",
        ),
        MessageRefused(
            peer="127.0.0.9",
            protocol="smtp",
            stage="rcpt",
            reason="relaying denied",
            recipient="x@elsewhere.example",
        ),
    )
    ok, _, _ = await verify_store(store)
    assert ok
    by_box = await store.audit_rows(AuditFilter(box="secretariat@cpts-demo.mssante.fr"))
    assert [r.action for r in by_box] == ["config.changed"]
    by_person = await store.audit_rows(AuditFilter(person="leroy"))
    assert [r.seq for r in by_person] == [3]
    by_prefix = await store.audit_rows(AuditFilter(action="message."))
    assert [r.action for r in by_prefix] == ["message.refused"]
    assert [r.seq for r in await store.audit_rows(AuditFilter(limit=2))] == [1, 2]


def test_verify_empty_chain() -> None:
    assert verify([], head_seq=0, head_hash="0" * 64).ok


def test_verify_pure_detects_hash_forgery() -> None:
    row = AuditRow(
        1, "2026-11-22T05:00:00.000000+00:00", "x", None, None, None, "{}", "0" * 64, "f" * 64
    )
    result = verify([row], head_seq=1, head_hash="f" * 64)
    assert not result.ok and result.first_broken_seq == 1


def test_every_event_has_a_unique_dotted_action() -> None:
    names = action_names()
    assert len(names) == len(set(names))
    assert all("." in n for n in names)


def test_events_never_take_content_fields() -> None:
    with pytest.raises(TypeError):
        MessageRefused(protocol="smtp", stage="data", reason="x", body="secret")  # type: ignore[call-arg]
