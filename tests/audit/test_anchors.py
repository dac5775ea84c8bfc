"""Anchors of the audit head outside the database: the pure check, the daemon writing
them (start, every interval, stop), and a chain begun before the store had an audit key.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from relay.audit.anchors import Anchor, check, make_anchor, parse, to_line
from relay.audit.events import AuditEvent, ConfigReloaded
from relay.config.model import StorageConfig
from relay.store.store import Store
from relay.tls.pki import DevPki
from tests.harness import start_daemon

KEY = b"k" * 32


def anchor(seq: int, hash_: str, keyed_from: int | None = 1, key: bytes = KEY) -> Anchor:
    return make_anchor(
        key,
        ts="2026-05-04T10:00:00+00:00",
        seq=seq,
        hash=hash_,
        keyed_from=keyed_from,
        key_id="abcd",
        node="n1",
        reason="interval",
    )


def test_anchor_lines_round_trip_and_forgeries_are_refused() -> None:
    good = to_line(anchor(3, "c" * 64))
    forged = to_line(anchor(3, "d" * 64, key=b"x" * 32))
    edited = good.replace('"seq":3', '"seq":2')
    anchors, problems = parse([good, forged, edited, "not json", ""], KEY)
    assert [(a.seq, a.line) for a in anchors] == [(3, 1)]
    assert problems == [
        "line 2: its MAC does not verify with the audit key (forged or damaged)",
        "line 3: its MAC does not verify with the audit key (forged or damaged)",
        "line 4: not an anchor (damaged or edited)",
    ]
    assert parse([good], None)[0] == []  # without the key nothing is trusted


def test_check_names_truncation_rewrite_and_unkeying() -> None:
    hashes = {1: "a" * 64, 2: "b" * 64, 3: "c" * 64}
    anchors, _ = parse([to_line(anchor(2, "b" * 64)), to_line(anchor(5, "e" * 64))], KEY)
    [truncated] = check(anchors, hashes, rows=3, keyed_from=1, path="F")
    assert truncated.first_bad_seq == 4 and truncated.anchor.line == 2
    assert "(F line 2) recorded 5 rows, the database holds 3: rows 4 to 5" in truncated.text

    anchors, _ = parse([to_line(anchor(2, "f" * 64))], KEY)
    [rewritten] = check(anchors, hashes, rows=3, keyed_from=1, path="F")
    assert rewritten.first_bad_seq == 2 and "rows up to 2 were rewritten" in rewritten.text

    anchors, _ = parse([to_line(anchor(2, "b" * 64))], KEY)
    [unkeyed] = check(anchors, hashes, rows=3, keyed_from=None, path="F")
    assert "keyed from row 1, the database says None" in unkeyed.text
    assert check(anchors, hashes, rows=3, keyed_from=1, path="F") == []


async def test_daemon_anchors_at_start_every_interval_and_at_stop(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> None:
    running = await start_daemon(
        tmp_path, dev_pki, storage, limits="audit_anchor_interval_seconds = 1"
    )
    path = running.runtime.config.storage.audit_anchor_path
    assert path.parent == tmp_path / "data"  # the state folder

    def lines() -> list[dict[str, object]]:
        return [json.loads(x) for x in path.read_text().splitlines()]

    try:
        assert [a["reason"] for a in lines()] == ["start"]
        event: AuditEvent = ConfigReloaded(config_file="x", changes=0)
        await running.store.record(event)
        seq, head = await running.store.audit_head()
        for _ in range(300):  # the interval is 1 s; a loaded machine may take longer
            if lines()[-1]["seq"] == seq:
                break
            await asyncio.sleep(0.1)
        assert lines()[-1] == {**lines()[-1], "seq": seq, "hash": head, "reason": "interval"}
        count = len(lines())
        await asyncio.sleep(2.5)  # nothing written since: nothing more to anchor
        assert len(lines()) == count
    finally:
        await running.daemon.stop("test finished", grace_seconds=1.0)
    last = lines()[-1]
    assert last["reason"] == "stop" and last["seq"] == seq + 1  # daemon.stopped anchored
    assert path.stat().st_mode & 0o077 == 0


async def test_chain_from_before_the_audit_key_verifies_with_a_note(
    storage: StorageConfig,
) -> None:
    """A store that ran before audit keys: its rows stay plain SHA-256 (rewriting them
    under the new key would itself be a rewrite of history); the first start with an
    audit key keys every row from then on."""
    store = await Store.open(storage)
    await store.execute_admin("UPDATE audit_head SET keyed_from = NULL")
    await store.execute_admin("DELETE FROM store_keys WHERE kind = 'audit'")
    store.keyed_from = store.audit_key = None  # as the code before audit keys wrote rows
    await store.record(*(ConfigReloaded(config_file=f"old-{i}", changes=0) for i in range(3)))
    await store.close()
    storage.audit_key_path.unlink()
    assert not storage.audit_anchor_path.exists()  # no anchor without an audit key

    upgraded = await Store.open(storage, may_create_keys=True)  # the first `serve` after
    try:
        assert upgraded.keyed_from == 4
        assert [r.action for r in await upgraded.audit_rows()][3:] == ["store.key_created"]
        await upgraded.record(ConfigReloaded(config_file="new", changes=0))
        await upgraded.anchor("test")
        result = await upgraded.verify_audit()
        assert result.ok, str(result)
        assert "rows 1 to 3 were written before this store had an audit key" in str(result)
        # the old rows are still linked: changing one breaks the chain
        await upgraded.execute_admin("UPDATE audit SET peer = '10.6.6.6' WHERE seq = 2")
        assert (await upgraded.verify_audit()).first_broken_seq == 2
    finally:
        await upgraded.close()
