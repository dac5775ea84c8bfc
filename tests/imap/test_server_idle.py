"""Two co-holders at once: each sees the other's changes, pushed through IDLE."""

from __future__ import annotations

import asyncio

from tests.harness import SHARED, RunningDaemon
from tests.imap.support import Raw, deliver, letter, login, ok, shared

INBOX = shared(SHARED)


async def test_coholders_see_each_others_flags_through_idle(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(1), letter(2), letter(3)])
    watcher = await asyncio.to_thread(Raw, daemon)
    try:
        await asyncio.to_thread(watcher.login, "dupont")
        untagged, final = await asyncio.to_thread(watcher.command, "s", f"SELECT {INBOX}")
        assert final.startswith(b"s OK [READ-WRITE]") and b"* 3 EXISTS" in untagged
        await asyncio.to_thread(watcher.send, b"i IDLE")
        assert (await asyncio.to_thread(watcher.line)).startswith(b"+ ")

        def martin_works() -> None:
            m = login(daemon, "martin")
            ok(m.select(INBOX))
            ok(m.store("2", "+FLAGS", "(\\Flagged \\Answered)"))
            ok(m.store("3", "+FLAGS.SILENT", "(\\Deleted)"))
            ok(m.expunge())
            m.logout()

        await asyncio.to_thread(martin_works)
        pushed = await asyncio.to_thread(watcher.until, b"* 3 EXPUNGE", 5.0)
        flags = [x for x in watcher.seen if b"FETCH" in x]
        # dupont selected first: the three messages are \Recent in her session only.
        assert flags[0] == b"* 2 FETCH (FLAGS (\\Recent \\Answered \\Flagged) UID 2)"
        # \Deleted on 3 is pushed unless the wake-up came after the EXPUNGE too (one
        # read then holds both, and the message is simply gone): either is right.
        assert flags[1:] in ([], [b"* 3 FETCH (FLAGS (\\Recent \\Deleted) UID 3)"])
        del pushed
        # a new message arrives (SMTP or the store): EXISTS is pushed too
        await deliver(daemon.store, SHARED, [letter(4)])
        assert await asyncio.to_thread(watcher.until, b"* 3 EXISTS", 5.0)
        assert await asyncio.to_thread(watcher.line) == b"* 3 RECENT"
        await asyncio.to_thread(watcher.send, b"DONE")
        assert (await asyncio.to_thread(watcher.until, b"i ")).startswith(b"i OK")
        untagged, _ = await asyncio.to_thread(watcher.command, "f", "UID FETCH 1:* (UID FLAGS)")
        assert untagged == [
            b"* 1 FETCH (UID 1 FLAGS (\\Recent))",
            b"* 2 FETCH (UID 2 FLAGS (\\Recent \\Answered \\Flagged))",
            b"* 3 FETCH (UID 4 FLAGS (\\Recent))",
        ]
    finally:
        watcher.close()


async def test_expunge_is_held_back_during_fetch_and_sent_after(daemon: RunningDaemon) -> None:
    """RFC 3501 §7.4.1: no EXPUNGE while answering FETCH; it comes with the next NOOP."""
    await deliver(daemon.store, SHARED, [letter(1), letter(2)])
    watcher = await asyncio.to_thread(Raw, daemon)
    try:
        await asyncio.to_thread(watcher.login, "dupont")
        await asyncio.to_thread(watcher.command, "s", f"SELECT {INBOX}")

        def martin_deletes() -> None:
            m = login(daemon, "martin")
            ok(m.select(INBOX))
            ok(m.store("1", "+FLAGS.SILENT", "(\\Deleted)"))
            ok(m.expunge())
            m.logout()

        await asyncio.to_thread(martin_deletes)
        untagged, final = await asyncio.to_thread(watcher.command, "f", "FETCH 1:* (FLAGS)")
        assert final.startswith(b"f OK")
        assert not [x for x in untagged if b"EXPUNGE" in x]
        untagged, _ = await asyncio.to_thread(watcher.command, "n", "NOOP")
        assert b"* 1 EXPUNGE" in untagged
        untagged, _ = await asyncio.to_thread(watcher.command, "f2", "FETCH 1:* (UID)")
        assert untagged == [b"* 1 FETCH (UID 2)"]
    finally:
        watcher.close()
