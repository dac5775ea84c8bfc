"""A test daemon with an HTTP listener (kind = "http") on a free loopback port."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.config.model import StorageConfig
from relay.tls.pki import DevPki
from tests.harness import RunningDaemon, daemon_running, free_ports


def http_listener(port: int, *, tls: str = "none", endpoints: str | None = None) -> str:
    lines = ["[[listeners]]", 'kind = "http"', f'address = "127.0.0.1:{port}"', f'tls = "{tls}"']
    if endpoints is not None:
        lines.append(f"endpoints = {endpoints}")
    return "\n".join(lines) + "\n"


@pytest.fixture
async def web(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> AsyncIterator[RunningDaemon]:
    """The test daemon plus an HTTP listener serving everything (loopback)."""
    port = free_ports(1)[0]
    async with daemon_running(tmp_path, dev_pki, storage, extra=http_listener(port)) as running:
        running.ports["http"] = port
        yield running


async def curl(*args: str) -> tuple[int, str, str]:
    """Run curl (a real HTTP client) off the event loop: (HTTP status, headers, body)."""

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["curl", "-sS", "--max-time", "30", "-D", "-", "-o", "-", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    done = await asyncio.to_thread(run)
    assert done.returncode == 0, done.stderr
    # text mode: the CRLFs of the status line and headers read as "\n"
    head, _, body = done.stdout.partition("\n\n")
    status = int(head.split()[1])
    return status, head, body
