"""The replay as a process of its own, for the SIGKILL test (`test_replay_sigkill`):
opens the store, logs in to the operator, replays the box's journal, exits.

    python -m tests.upstream.replay_child URL KEY_FILE SCHEMA PORT CA LOGIN PASSWORD BOX
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path

import aioimaplib

from relay.config.model import StorageConfig
from relay.store.store import Store
from relay.upstream.replay import OperatorCaps
from relay.upstream.replayer import Replayer


async def main(argv: list[str]) -> None:
    url, key_file, schema, port, ca, login, password, box = argv
    store = await Store.open(
        StorageConfig(url=url, key_file=Path(key_file), schema=schema or None), migrate=False
    )
    client = aioimaplib.IMAP4_SSL(
        "localhost", int(port), ssl_context=ssl.create_default_context(cafile=ca), timeout=10
    )
    await client.wait_hello_from_server()
    assert (await client.login(login, password)).result == "OK"
    await client.protocol.simple_command("ENABLE", "CONDSTORE")
    caps = OperatorCaps.from_capabilities(client.protocol.capabilities)
    print("replaying", flush=True)
    report = await Replayer(store, box, client, caps).run()
    print(f"done {report.done}", flush=True)
    await client.logout()
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
