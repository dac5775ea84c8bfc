"""Rights from the config, seen through IMAP: NOPERM, ACL commands, windows, reloads."""

from __future__ import annotations

import asyncio
import datetime as dt
import imaplib
import json
import re

import pytest

from relay.store.store import AuditFilter
from tests.harness import PASSWORDS, SHARED, RunningDaemon
from tests.imap.support import Raw, answer, deliver, letter, login, ok, shared

INBOX = shared(SHARED)


async def test_read_only_replacement_cannot_delete_or_expunge(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(1), letter(2)])

    def run() -> None:
        m = login(daemon, "leroy")
        assert ok(m.select(INBOX)) == [b"2"]
        ok(m.fetch("1", "(BODY[])"))  # read implies keeping \Seen (RFC 4314 "s")
        typ, first = answer(m.store("1", "+FLAGS", "(\\Deleted)"))
        assert typ == "NO" and first.startswith(b"[NOPERM]")
        typ, first = answer(m.store("1", "+FLAGS", "(\\Flagged)"))
        assert typ == "NO" and first.startswith(b"[NOPERM]")
        typ, first = answer(m.expunge())
        assert typ == "NO" and first.startswith(b"[NOPERM]")
        typ, data = m._simple_command("UID", "MOVE", "1", shared(SHARED, "Trash"))
        assert typ == "NO"
        typ, first = answer(m.append(INBOX, None, None, letter(3)))
        assert typ == "NO" and first.startswith(b"[NOPERM]")
        typ, data = m.myrights(INBOX)
        assert data == [b'"Partages/secretariat@cpts-demo.mssante.fr/INBOX" lrs']
        m.logout()

    await asyncio.to_thread(run)
    messages = await daemon.store.messages(SHARED)
    assert [m.flags for m in messages] == ["", ""]  # \Seen is per person: in `seen`


async def test_secretary_flags_and_posts_to_sent_only(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(1)])

    def run() -> None:
        d = login(daemon, "dupont")
        ok(d.select(INBOX))
        assert b"\\Flagged" in ok(d.store("1", "+FLAGS", "(\\Flagged)"))[0]
        typ, first = answer(d.store("1", "+FLAGS", "(\\Deleted)"))
        assert typ == "NO" and b"NOPERM" in first
        # FLAGS replacement cannot clear what dupont may not set
        ok(d.append(shared(SHARED, "Sent"), "(\\Seen)", None, letter(2)))
        typ, first = answer(d.append(INBOX, None, None, letter(3)))
        assert typ == "NO" and b"NOPERM" in first
        assert ok(d.myrights(shared(SHARED, "Sent"))) == [
            b'"Partages/secretariat@cpts-demo.mssante.fr/Sent" lrswip'
        ]
        typ, first = answer(d.getacl(INBOX))
        assert typ == "NO" and b"NOPERM" in first
        d.logout()

    await asyncio.to_thread(run)


async def test_acl_commands(daemon: RunningDaemon) -> None:
    def run() -> None:
        m = login(daemon, "martin")
        assert ok(m.getacl(INBOX)) == [
            b'"Partages/secretariat@cpts-demo.mssante.fr/INBOX" martin lrswipkxtea '
            b"dupont lrsw leroy lrs"
        ]  # ancien's window is over: not listed
        m.logout()
        raw = Raw(daemon)
        raw.login("martin")
        untagged, final = raw.command("r", f"LISTRIGHTS {INBOX} dupont")
        assert final.startswith(b"r OK")
        assert untagged == [
            b'* LISTRIGHTS "Partages/secretariat@cpts-demo.mssante.fr/INBOX" dupont "" '
            b"lrs w te ip kxa"
        ]
        for text in (f"SETACL {INBOX} dupont +te", f"DELETEACL {INBOX} leroy"):
            _, final = raw.command("x", text)
            assert final.startswith(b"x NO [CANNOT]")
            assert b"managed in the mss-relay configuration file" in final
        raw.close()

    await asyncio.to_thread(run)


async def test_replacement_outside_window_cannot_reach_the_box(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(1)])

    def run() -> None:
        a = login(daemon, "ancien")
        assert not [x for x in ok(a.list()) if b"secretariat" in x]
        typ, first = answer(a.select(INBOX))
        assert typ == "NO" and first.startswith(b"[NONEXISTENT]")
        typ, _ = a.status(INBOX, "(MESSAGES)")
        assert typ == "NO"
        a.logout()
        b = imaplib.IMAP4_SSL(
            "localhost", daemon.ports["imap-tls"], ssl_context=daemon.client_context(), timeout=10
        )
        with pytest.raises(imaplib.IMAP4.error, match="AUTHORIZATIONFAILED"):
            b.login(f"ancien*{SHARED}", PASSWORDS["ancien"])
        b.logout()

    await asyncio.to_thread(run)
    assert await daemon.store.audit_rows(AuditFilter(person="ancien", action="imap.")) == []


async def test_reload_removing_a_coholder_closes_their_session(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(1)])
    idle = await asyncio.to_thread(Raw, daemon)
    await asyncio.to_thread(idle.login, "dupont")
    _, final = await asyncio.to_thread(idle.command, "s", f"SELECT {INBOX}")
    assert final.startswith(b"s OK")
    busy = await asyncio.to_thread(Raw, daemon)
    await asyncio.to_thread(busy.login, "dupont")
    await asyncio.to_thread(busy.command, "s", f"SELECT {INBOX}")
    await asyncio.to_thread(idle.send, b"i IDLE")
    assert (await asyncio.to_thread(idle.line)).startswith(b"+ ")
    # the admin removes dupont from the shared box, then reloads
    text = daemon.config_path.read_text(encoding="utf-8")
    text = re.sub(
        r'\[\[mailboxes\.coholders\]\]\nperson = "dupont"\nrights = \[[^\]]*\]\n', "", text
    )
    daemon.config_path.write_text(text, encoding="utf-8")
    started = asyncio.get_running_loop().time()
    assert (await daemon.daemon.reload()).applied
    bye = await asyncio.to_thread(idle.until, b"* BYE", 5.0)
    assert b"withdrawn" in bye
    assert asyncio.get_running_loop().time() - started < 5
    bye2 = await asyncio.to_thread(busy.until, b"* BYE", 5.0)
    assert b"withdrawn" in bye2
    with pytest.raises(EOFError):
        await asyncio.to_thread(idle.line, 5.0)
    idle.close()
    busy.close()

    # a new session no longer sees the box
    def again() -> None:
        d = login(daemon, "dupont")
        typ, _ = d.select(INBOX)
        assert typ == "NO"
        d.logout()

    await asyncio.to_thread(again)
    for _ in range(50):
        rows = await daemon.store.audit_rows(AuditFilter(action="imap.access_revoked"))
        if rows:
            break
        await asyncio.sleep(0.05)
    [row] = rows
    assert row.person == "dupont" and row.box == SHARED
    assert json.loads(row.data)["details"]["sessions"] == 2


async def test_window_end_applies_on_the_next_command(daemon: RunningDaemon) -> None:
    """leroy's window ends while his session is open: his next read is refused."""
    await deliver(daemon.store, SHARED, [letter(1)])

    def run() -> imaplib.IMAP4_SSL:
        m = login(daemon, "leroy")
        ok(m.select(INBOX))
        return m

    m = await asyncio.to_thread(run)
    runtime = daemon.runtime
    real = runtime.clock
    runtime.clock = lambda: real() + dt.timedelta(days=45)
    try:
        typ, first = answer(await asyncio.to_thread(m.fetch, "1", "(BODY.PEEK[])"))
        assert typ == "NO" and first.startswith(b"[NOPERM]")
    finally:
        runtime.clock = real
        await asyncio.to_thread(m.logout)
