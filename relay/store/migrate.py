"""Schema migrations with Alembic, run by the daemon at start (and by tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant: serialises migrations when several nodes start on one PostgreSQL.
_PG_LOCK_KEY = 0x6D7373  # "mss"


def _config(connection: Connection) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


async def upgrade(engine: AsyncEngine, *, schema: str | None = None) -> None:
    """Bring the database to the newest schema. Idempotent; never drops data."""
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            if schema:
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
        try:
            await conn.run_sync(lambda sync: command.upgrade(_config(sync), "head"))
            await conn.commit()
        finally:
            if engine.dialect.name == "postgresql":
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                await conn.commit()


async def current_revision(engine: AsyncEngine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )
