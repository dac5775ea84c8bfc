"""Fixtures shared by every test suite.

`storage` is parametrised over both engines: every test that uses it runs on SQLite
(a fresh file) and on the PostgreSQL server of this machine (a fresh schema in the
database named by RELAY_TEST_DATABASE_URL, default the local `test` database).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from relay.config.model import StorageConfig
from relay.store.crypto import create_key_file
from relay.store.store import Store
from relay.tls.pki import DevPki, generate_dev_pki
from tests.harness import RunningDaemon, daemon_running

PG_URL = os.environ.get(
    "RELAY_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
ENGINES = ("sqlite", "postgresql")


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(PG_URL))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(params=ENGINES)
def engine_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def make_key_files(directory: Path) -> Path:
    """`blob.key` and `audit.key` in `directory`, as `mss-relay key init` makes them."""
    key_file = directory / "blob.key"
    create_key_file(key_file)
    create_key_file(directory / "audit.key")
    return key_file


@pytest.fixture
async def storage(engine_name: str, tmp_path: Path) -> AsyncIterator[StorageConfig]:
    """A fresh, empty database on the engine of this test run, and its key files (any
    command may open it; tests of key creation remove them)."""
    key_file = make_key_files(tmp_path)
    if engine_name == "sqlite":
        yield StorageConfig(url=f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}", key_file=key_file)
        return
    schema = f"t_{secrets.token_hex(6)}"
    yield StorageConfig(url=PG_URL, key_file=key_file, schema=schema)
    await _drop_schema(schema)


@pytest.fixture
async def store(storage: StorageConfig) -> AsyncIterator[Store]:
    s = await Store.open(storage)
    await s.ensure_mailboxes(["secretariat@cpts-demo.mssante.fr", "martin@cpts-demo.mssante.fr"])
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(scope="session")
def repo_root() -> Iterator[Path]:
    yield Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """The dev PKI with a server certificate for `localhost` (what tests connect to)."""
    return generate_dev_pki(tmp_path_factory.mktemp("devpki"), "localhost")


@pytest.fixture
async def daemon(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> AsyncIterator[RunningDaemon]:
    """A real daemon on free 127.0.0.1 ports, on the engine of this test run."""
    async with daemon_running(tmp_path, dev_pki, storage) as running:
        yield running
