"""aioimaplib (asyncio client) against the server: login, read, IDLE push."""

from __future__ import annotations

import asyncio

import aioimaplib

from tests.harness import PASSWORDS, SHARED, RunningDaemon
from tests.imap.support import deliver, letter, login, ok, shared

INBOX = shared(SHARED)


async def _client(d: RunningDaemon, person: str) -> aioimaplib.IMAP4_SSL:
    client = aioimaplib.IMAP4_SSL(
        host="localhost", port=d.ports["imap-tls"], ssl_context=d.client_context(), timeout=10
    )
    await client.wait_hello_from_server()
    response = await client.login(person, PASSWORDS[person])
    assert response.result == "OK", response
    return client


async def test_aioimaplib_reads_and_idles_on_the_shared_box(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(1), letter(2)])
    client = await _client(daemon, "dupont")
    try:
        response = await client.select(INBOX)
        assert response.result == "OK"
        assert b"2 EXISTS" in response.lines
        response = await client.uid(
            "fetch", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])"
        )
        assert response.result == "OK"
        assert any(b"Subject: Compte rendu 2" in line for line in response.lines)
        response = await client.search("UNSEEN")
        assert response.result == "OK" and response.lines[0] == b"1 2"

        idle = await client.idle_start(timeout=10)
        assert client.has_pending_idle()

        def martin_flags() -> None:
            m = login(daemon, "martin")
            ok(m.select(INBOX))
            ok(m.store("1", "+FLAGS", "(\\Flagged)"))
            m.logout()

        await asyncio.to_thread(martin_flags)
        pushed = await client.wait_server_push(timeout=5)
        # dupont selected first: the messages are \Recent for her session only.
        assert b"1 FETCH (FLAGS (\\Recent \\Flagged) UID 1)" in pushed
        client.idle_done()
        done = await asyncio.wait_for(idle, 5)
        assert done.result == "OK"
    finally:
        await client.logout()
