"""NOTIFY (RFC 5465) over the wire, both engines: unsolicited STATUS for the shared
boxes a co-holder sees, news of the selected box without IDLE, BADEVENT, and no news
at all once the person's access is withdrawn."""

from __future__ import annotations

import asyncio
import re

from tests.harness import SHARED, RunningDaemon
from tests.imap.support import Raw, deliver, letter, shared

INBOX = shared(SHARED)
INBOX_NAME = INBOX.strip('"')


async def test_notify_status_of_shared_box_and_access_loss(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(1)])
    raw = await asyncio.to_thread(Raw, daemon)
    try:
        await asyncio.to_thread(raw.login, "dupont")
        _, final = await asyncio.to_thread(
            raw.command, "n", "NOTIFY SET STATUS (SUBTREE Partages (MessageNew MessageExpunge))"
        )
        assert final.startswith(b"n OK"), final
        # the initial STATUS of every watched mailbox the person may read (RFC 5465 §3)
        assert any(
            line.startswith(f'* STATUS "{INBOX_NAME}" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY '.encode())
            for line in raw.seen
        ), raw.seen
        # a new message, no command sent: the STATUS comes by itself
        await deliver(daemon.store, SHARED, [letter(2)])
        line = await asyncio.to_thread(raw.until, f'* STATUS "{INBOX_NAME}"'.encode(), 10.0)
        assert b"MESSAGES 2 UIDNEXT 3" in line, line
        # a flag change is not asked for: nothing is sent for it
        martin = await asyncio.to_thread(Raw, daemon)
        await asyncio.to_thread(martin.login, "martin")
        await asyncio.to_thread(martin.command, "s", f"SELECT {INBOX}")
        await asyncio.to_thread(martin.command, "f", "STORE 1 +FLAGS (\\Flagged)")
        martin.close()
        seen, final = await asyncio.to_thread(raw.command, "a", "NOOP")
        assert not [x for x in seen if x.startswith(b"* STATUS")], seen
        # the admin withdraws dupont's access; dupont's session has nothing selected
        text = daemon.config_path.read_text(encoding="utf-8")
        text = re.sub(
            r'\[\[mailboxes\.coholders\]\]\nperson = "dupont"\nrights = \[[^\]]*\]\n', "", text
        )
        daemon.config_path.write_text(text, encoding="utf-8")
        assert (await daemon.daemon.reload()).applied
        await deliver(daemon.store, SHARED, [letter(3)])
        await asyncio.sleep(1.0)
        seen, final = await asyncio.to_thread(raw.command, "b", "NOOP")
        assert final.startswith(b"b OK")
        assert not [x for x in seen if SHARED.encode() in x], seen  # never told again
    finally:
        raw.close()


async def test_notify_refuses_events_it_does_not_report(daemon: RunningDaemon) -> None:
    def run() -> None:
        raw = Raw(daemon)
        raw.login("martin")
        _, final = raw.command("x", "NOTIFY SET (PERSONAL (MessageNew MessageExpunge MailboxName))")
        assert final.startswith(b"x NO [BADEVENT (FlagChange MessageExpunge MessageNew)]"), final
        _, final = raw.command("y", "NOTIFY SET (PERSONAL (Bogus))")
        assert final.startswith(b"y NO [BADEVENT"), final
        _, final = raw.command("z", "NOTIFY SET (NOWHERE (MessageNew))")
        assert final.startswith(b"z BAD"), final
        raw.close()

    await asyncio.to_thread(run)


async def test_notify_pushes_exists_and_fetch_for_the_selected_box(daemon: RunningDaemon) -> None:
    raw = await asyncio.to_thread(Raw, daemon)
    try:
        await asyncio.to_thread(raw.login, "martin")
        await asyncio.to_thread(raw.command, "s", f"SELECT {INBOX}")
        _, final = await asyncio.to_thread(
            raw.command, "n", "NOTIFY SET (SELECTED (MessageNew (UID FLAGS) MessageExpunge))"
        )
        assert final.startswith(b"n OK"), final
        await deliver(daemon.store, SHARED, [letter(1)])
        exists = await asyncio.to_thread(raw.until, b"* 1 EXISTS", 10.0)
        assert exists == b"* 1 EXISTS"
        fetch = await asyncio.to_thread(raw.until, b"* 1 FETCH", 10.0)
        # this session is the first to hear of it: \Recent for it (RFC 3501 §2.3.2)
        assert fetch == b"* 1 FETCH (UID 1 FLAGS (\\Recent))", fetch
        _, final = await asyncio.to_thread(raw.command, "z", "NOTIFY NONE")
        assert final.startswith(b"z OK")
        await deliver(daemon.store, SHARED, [letter(2)])
        await asyncio.sleep(0.5)
        # without NOTIFY, news waits for the next command (RFC 3501 §7)
        seen, _ = await asyncio.to_thread(raw.command, "y", "NOOP")
        assert seen[0] == b"* 2 EXISTS", seen

    finally:
        raw.close()
