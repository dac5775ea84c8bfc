"""The replay as a process of its own, for the SIGKILL test (`test_replay_sigkill`):
opens the store, logs in to the operator, replays the box's journal, exits.

    python -m tests.upstream.replay_child URL KEY_FILE SCHEMA PORT CA LOGIN PASSWORD_FILE BOX
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from relay.config.model import Endpoint, StorageConfig, TlsMode, UpstreamConfig
from relay.store.store import Store
from relay.upstream.connection import open_session
from relay.upstream.replayer import Replayer


async def main(argv: list[str]) -> None:
    url, key_file, schema, port, ca, login, password_file, box = argv
    store = await Store.open(
        StorageConfig(url=url, key_file=Path(key_file), schema=schema or None), migrate=False
    )
    up = UpstreamConfig(
        imap=Endpoint("localhost", int(port), TlsMode.IMPLICIT),
        submission=None,
        login=login,
        password_file=Path(password_file),
        certificate=None,
        key=None,
        trust_anchors=(Path(ca),),
        crl_files=(),
        folders=None,
    )
    session = await open_session(box, up)
    await session.client.protocol.simple_command("ENABLE", "CONDSTORE")
    print("replaying", flush=True)
    report = await Replayer.over(store, session).run()
    print(f"done {report.done}", flush=True)
    await session.logout()
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
