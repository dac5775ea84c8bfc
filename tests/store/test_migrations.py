"""The Alembic migrations produce exactly the tables `schema.py` declares."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from relay.config.model import StorageConfig
from relay.store.migrate import current_revision
from relay.store.schema import metadata
from relay.store.store import Store


def script_head() -> str:
    """The newest revision of the migration scripts (one head: a linear history)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from relay.store.migrate import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    heads = ScriptDirectory.from_config(cfg).get_heads()
    assert len(heads) == 1, f"migration history has several heads: {heads}"
    return heads[0]


def _diff(sync: Connection) -> list[Any]:
    ctx = MigrationContext.configure(sync)
    return list(compare_metadata(ctx, metadata))


async def test_migrated_schema_matches_declared_tables(store: Store) -> None:
    async with store._write.connect() as conn:
        diff = await conn.run_sync(_diff)
    assert diff == []
    assert await current_revision(store._write) == script_head()
    seq, head = await store.audit_head()
    assert (seq, head) == (0, "0" * 64)


async def _migrate_to(storage: StorageConfig, revision: str) -> None:
    from alembic import command

    from relay.store.migrate import _config
    from relay.store.store import _make_engines

    _, engine = _make_engines(storage)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(lambda sync: command.downgrade(_config(sync), revision))
            await conn.commit()
    finally:
        await engine.dispose()


async def _blob_columns(storage: StorageConfig) -> list[str]:
    from relay.store.store import _make_engines

    _, engine = _make_engines(storage)
    try:
        async with engine.connect() as conn:
            names = await conn.exec_driver_sql(
                "SELECT name FROM pragma_table_info('blobs') ORDER BY cid"
            )
            return [str(n) for n in names.scalars()]
    finally:
        await engine.dispose()


async def test_0007_moves_blob_data_last_and_keeps_rows_and_references(
    storage: StorageConfig,
) -> None:
    """A store written before 0007 (`data` in the middle of `blobs`), with a message
    and a queue row naming its blob, comes out of the upgrade with the same bytes,
    `data` last on SQLite (PostgreSQL: nothing to do) and no dangling reference."""
    from dataclasses import replace

    from tests.store.test_store import BOX, acceptance, message

    store = await Store.open(storage)
    await store.ensure_mailboxes([BOX, "martin@cpts-demo.mssante.fr"])
    await store.accept(replace(acceptance(1, remote=("dr.x@chu-exemple.mssante.fr",))))
    await store.close()
    await _migrate_to(storage, "0006")
    if storage.url.startswith("sqlite"):
        assert await _blob_columns(storage) == ["id", "size", "data", "meta", "created_at"]

    store = await Store.open(storage)  # upgrades to the head again
    try:
        assert await current_revision(store._write) == script_head()
        [stored] = await store.messages(BOX)
        assert stored.raw == message(1)
        [queued] = await store.queue_rows()
        assert await store.sql_scalar("SELECT blob_id FROM messages") == queued["blob_id"]
        assert await store.read_blob(queued["blob_id"]) == message(1)
        if storage.url.startswith("sqlite"):
            async with store._write.connect() as conn:
                dangling = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
                aside = await conn.exec_driver_sql(
                    "SELECT count(*) FROM sqlite_master WHERE name = '_blobs_0007'"
                )
                assert aside.scalar() == 0
            assert await _blob_columns(storage) == ["id", "size", "meta", "created_at", "data"]
            assert dangling == []
        # a message accepted after the upgrade goes in beside the old one
        await store.accept(acceptance(2))
        assert sorted(m.raw for m in await store.messages(BOX)) == [message(1), message(2)]
    finally:
        await store.close()
