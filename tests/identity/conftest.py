"""Fixtures of the token tests: the local issuer and a daemon that trusts it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from relay.config.model import StorageConfig
from relay.tls.pki import DevPki
from tests.harness import RunningDaemon, start_daemon
from tests.issuer import LocalIssuer

StartDaemon = Callable[..., Awaitable[RunningDaemon]]


@pytest.fixture
async def issuer(dev_pki: DevPki) -> AsyncIterator[LocalIssuer]:
    made = LocalIssuer(dev_pki)
    await made.start()
    try:
        yield made
    finally:
        await made.stop()


@pytest.fixture
async def start_token_daemon(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig, issuer: LocalIssuer
) -> AsyncIterator[StartDaemon]:
    """Start a daemon whose `[issuer]` is the local issuer (`issuer_config` overrides
    its keys); stopped at the end of the test."""
    started: list[RunningDaemon] = []

    async def start(*, issuer_config: dict[str, Any] | None = None, **kw: Any) -> RunningDaemon:
        extra = issuer.config(**(issuer_config or {}))
        running = await start_daemon(tmp_path, dev_pki, storage, extra=extra, **kw)
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in started:
            await running.daemon.stop("test finished", grace_seconds=1.0)


@pytest.fixture
async def token_daemon(start_token_daemon: StartDaemon) -> RunningDaemon:
    return await start_token_daemon()
