"""The Alembic migrations produce exactly the tables `schema.py` declares."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

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
