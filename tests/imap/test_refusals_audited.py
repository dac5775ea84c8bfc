"""Issue 9 item 10: a refused operation on a shared box (NO [NOPERM]) is in the audit
trail with the request and the answer, rate-limited per session. Both engines.

Before: only accepted operations were recorded; a co-holder trying UID MOVE, UID
EXPUNGE or STORE \\Deleted without the right left no trace.
"""

from __future__ import annotations

import asyncio
import json

from relay.audit.limiter import WindowLimiter
from relay.store.store import AuditFilter
from tests.harness import SHARED, RunningDaemon, daemon_fixture
from tests.imap.support import answer, deliver, letter, login, ok, shared

INBOX = shared(SHARED)
ALLOWANCE = 5


d = daemon_fixture(limits=f"imap_refusals_audited_per_minute = {ALLOWANCE}")


async def test_each_refusal_is_recorded_with_request_and_answer(d: RunningDaemon) -> None:
    await deliver(d.store, SHARED, [letter(1), letter(2)])

    def run() -> list[bytes]:
        m = login(d, "leroy")  # read only
        ok(m.select(INBOX))
        answers = [
            answer(m.uid("STORE", "1", "+FLAGS", "(\\Deleted)"))[1],
            answer(m.uid("EXPUNGE", "1"))[1],
            answer(m._simple_command("UID", "MOVE", "1", shared(SHARED, "Trash")))[1],
        ]
        m.logout()
        return answers

    answers = await asyncio.to_thread(run)
    assert all(a.startswith(b"[NOPERM]") for a in answers)
    rows = await d.store.audit_rows(AuditFilter(action="imap.refused"))
    assert [(r.person, r.box, r.peer) for r in rows] == [("leroy", SHARED, "127.0.0.1")] * 3
    records = [json.loads(r.data) for r in rows]
    folder = f"Partages/{SHARED}/INBOX"
    assert [x["request"] for x in records] == [
        f"UID STORE +FLAGS (\\Deleted) (in {folder})",
        f"UID EXPUNGE (in {folder})",
        f"UID MOVE {folder.replace('INBOX', 'Trash')} (in {folder})",
    ]
    assert all(x["answer"].startswith("NO [NOPERM] You do not have the right") for x in records)
    assert [x["details"] for x in records] == [{"folder": "INBOX", "suppressed": 0}] * 3
    assert (await d.store.verify_audit()).ok


async def test_a_looping_client_cannot_flood_the_trail(d: RunningDaemon) -> None:
    await deliver(d.store, SHARED, [letter(1)])

    def run() -> None:
        m = login(d, "leroy")
        ok(m.select(INBOX))
        for _ in range(50):
            assert answer(m.uid("STORE", "1", "+FLAGS", "(\\Deleted)"))[0] == "NO"
        m.logout()

    await asyncio.to_thread(run)
    recorded = await d.store.audit_rows(AuditFilter(action="imap.refused"))
    assert len(recorded) == ALLOWANCE
    [summary] = await d.store.audit_rows(AuditFilter(action="imap.refusals_suppressed"))
    assert summary.person == "leroy"
    assert json.loads(summary.data)["details"] == {"count": 50 - ALLOWANCE}


def test_window_limiter_counts_what_it_holds_back() -> None:
    limiter = WindowLimiter(2, 60.0)
    assert [limiter.allow(t) for t in (0, 1, 2, 3)] == [True, True, False, False]
    assert limiter.take_suppressed() == 2 and limiter.take_suppressed() == 0
    assert limiter.allow(60.5)  # a new window
