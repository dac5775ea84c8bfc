"""Issue 9 item 7: someone who can write the database rewrites or truncates the audit
chain the way an attacker would, and `mss-relay audit verify` (a real process) fails and
names the anchor the database contradicts. Both engines.

Before: about fifteen lines recomputing every later SHA-256 hash and the head made a
rewritten chain verify as intact; deleting the newest rows and moving the head back
went unnoticed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from relay.audit.events import AuditEvent, AuthFailed
from relay.config import load
from relay.config.model import StorageConfig
from relay.store.store import Store
from relay.tls.pki import DevPki
from tests.harness import LISTENER_NAMES, free_ports, write_config
from tests.test_cli import cli


def events(n: int, start: int = 1) -> list[AuditEvent]:
    return [
        AuthFailed(
            peer=f"192.0.2.{i}",
            protocol="imap",
            mechanism="PLAIN",
            login=f"user{i}",
            reason="bad password",
            request="AUTHENTICATE PLAIN",
            answer="NO [AUTHENTICATIONFAILED]",
        )
        for i in range(start, start + n)
    ]


@pytest.fixture
async def config(tmp_path: Path, dev_pki: DevPki, storage: StorageConfig) -> Path:
    """A store with 15 audit rows and two anchors: 10 rows (line 1), 15 rows (line 2)."""
    ports = dict(zip(LISTENER_NAMES, free_ports(len(LISTENER_NAMES)), strict=True))
    path = write_config(tmp_path, dev_pki, storage, ports)
    for batch in (events(10), events(5, start=11)):
        store = await Store.open(load(path).storage)
        await store.record(*batch)
        await store.close()  # anchors the head it wrote
    return path


@pytest.fixture
async def db(storage: StorageConfig) -> AsyncIterator[AsyncEngine]:
    """The attacker's own connection to the database: no key, no mss-relay code."""
    args = {"server_settings": {"search_path": storage.schema}} if storage.schema else {}
    engine = create_async_engine(storage.url, connect_args=args)
    yield engine
    await engine.dispose()


async def rewrite(db: AsyncEngine, seq: int, key: bytes | None = None) -> None:
    """Change row `seq`'s login, then recompute every later hash and the head, as
    relay/audit/chain.py documents them (plain SHA-256, or HMAC with a stolen key)."""
    async with db.begin() as conn:
        rows = (await conn.execute(text("SELECT * FROM audit ORDER BY seq"))).mappings().all()
        prev = rows[seq - 2]["hash"]
        for r in rows[seq - 1 :]:
            data = r["data"].replace('"user', '"innocent') if r["seq"] == seq else r["data"]
            fields = {k: r[k] for k in ("seq", "ts", "action", "person", "box", "peer")}
            body = json.dumps({**fields, "data": data}, sort_keys=True, separators=(",", ":"))
            message = f"{prev}\n{body}".encode()
            if key is None:
                digest = hashlib.sha256(message).hexdigest()
            else:
                digest = hmac.new(key, message, hashlib.sha256).hexdigest()
            await conn.execute(
                text("UPDATE audit SET data = :d, prev_hash = :p, hash = :h WHERE seq = :s"),
                {"d": data, "p": prev, "h": digest, "s": r["seq"]},
            )
            prev = digest
        await conn.execute(text("UPDATE audit_head SET hash = :h"), {"h": prev})


async def truncate(db: AsyncEngine, keep: int) -> None:
    async with db.begin() as conn:
        await conn.execute(text("DELETE FROM audit WHERE seq > :k"), {"k": keep})
        last = await conn.execute(text("SELECT hash FROM audit WHERE seq = :k"), {"k": keep})
        await conn.execute(
            text("UPDATE audit_head SET seq = :k, hash = :h"), {"k": keep, "h": last.scalar()}
        )


def verify(config: Path) -> str:
    result = cli("audit", "verify", "--config", str(config))
    assert "Traceback" not in result.stderr
    assert result.returncode == (0 if result.stdout.startswith("OK") else 1), result
    return result.stdout


def anchors_file(storage: StorageConfig, config: Path) -> Path:
    return load(config).storage.audit_anchor_path


async def test_intact_chain_agrees_with_its_anchors(config: Path, storage: StorageConfig) -> None:
    out = verify(config)
    assert out.startswith("OK: 15 audit rows, chain intact; agrees with 2 anchor(s)")
    lines = anchors_file(storage, config).read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [10, 15]


async def test_rewrite_without_the_key_fails_and_names_the_anchor(
    config: Path, db: AsyncEngine
) -> None:
    await rewrite(db, 12)
    out = verify(config)
    assert out.startswith("BROKEN at row 12: content does not match its hash")
    assert "contradicts the anchor of" in out and " line 2) recorded row 15" in out
    assert " line 1)" not in out  # rows up to 10 are untouched: anchor 1 still holds


async def test_rewrite_with_the_stolen_key_is_caught_by_the_anchor(
    config: Path, db: AsyncEngine, storage: StorageConfig
) -> None:
    await rewrite(db, 12, key=storage.audit_key_path.read_bytes())
    out = verify(config)
    assert out.startswith("BROKEN at row 15: the database contradicts 1 anchor(s)")
    assert "line 2) recorded row 15 with hash" in out and "rewritten" in out


async def test_truncation_names_the_anchor(config: Path, db: AsyncEngine) -> None:
    await truncate(db, keep=12)
    out = verify(config)
    assert out.startswith("BROKEN at row 13: the database contradicts 1 anchor(s)")
    assert "line 2) recorded 15 rows, the database holds 12: rows 13 to 15 were removed" in out


async def test_truncation_below_both_anchors(config: Path, db: AsyncEngine) -> None:
    await truncate(db, keep=4)
    out = verify(config)
    assert "contradicts 2 anchor(s)" in out
    assert "line 1) recorded 10 rows" in out and "line 2) recorded 15 rows" in out


async def test_missing_head_row_is_reported_not_a_traceback(config: Path, db: AsyncEngine) -> None:
    async with db.begin() as conn:
        await conn.execute(text("DELETE FROM audit_head"))
    out = verify(config)
    assert out.startswith("BROKEN: the audit_head row is missing")


async def test_chain_passed_off_as_unkeyed_is_caught(config: Path, db: AsyncEngine) -> None:
    async with db.begin() as conn:
        await conn.execute(text("UPDATE audit_head SET keyed_from = NULL"))
    await rewrite(db, 2)  # every row from 2 on recomputed with plain SHA-256
    out = verify(config)
    assert "an audit key is registered for this store but its head says no row is keyed" in out
    assert "contradicts the anchor of" in out


async def test_forged_anchor_line_is_refused(config: Path, storage: StorageConfig) -> None:
    path = anchors_file(storage, config)
    line = json.loads(path.read_text().splitlines()[-1])
    line["seq"] = 9
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")
    out = verify(config)
    assert "line 3: its MAC does not verify with the audit key" in out
