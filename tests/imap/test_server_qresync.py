"""QRESYNC over the wire (RFC 7162 §3.2): ENABLE, SELECT (QRESYNC (...)), VANISHED
(EARLIER) and live VANISHED instead of EXPUNGE, UID FETCH (CHANGEDSINCE n VANISHED),
CLOSED, and the HIGHESTMODSEQ that keeps a client from skipping a held-back removal."""

from __future__ import annotations

import asyncio
import re

from tests.harness import SHARED, RunningDaemon
from tests.imap.support import Raw, deliver, letter, shared

INBOX = shared(SHARED)


def _session(d: RunningDaemon, person: str = "martin", *, qresync: bool = True) -> Raw:
    s = Raw(d)
    s.login(person)
    if qresync:
        untagged, final = s.command("e", "ENABLE QRESYNC")
        assert untagged == [b"* ENABLED QRESYNC"] and final.startswith(b"e OK")
    return s


def _code(lines: list[bytes], name: bytes) -> int:
    for line in lines:
        m = re.search(rb"\[" + name + rb" (\d+)\]", line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no {name!r} in {lines!r}")


async def test_qresync_is_refused_until_enabled(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(1)])

    def run() -> None:
        s = _session(daemon, qresync=False)
        untagged, _ = s.command("c", "CAPABILITY")
        assert b" QRESYNC" in untagged[0] and b" CONDSTORE" in untagged[0]
        _, final = s.command("s", f"SELECT {INBOX} (QRESYNC (1 1))")
        assert final.startswith(b"s BAD")
        s.command("s2", f"SELECT {INBOX}")
        _, final = s.command("f", "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
        assert final.startswith(b"f BAD")
        s.command("e", "ENABLE QRESYNC")
        _, final = s.command("f2", "UID FETCH 1:* (FLAGS) (VANISHED)")  # needs CHANGEDSINCE
        assert final.startswith(b"f2 BAD")
        _, final = s.command("f3", "FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")  # UID only
        assert final.startswith(b"f3 BAD")
        s.close()

    await asyncio.to_thread(run)


async def test_select_qresync_reports_what_changed_since(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(i) for i in range(1, 6)])
    loop = asyncio.get_running_loop()

    def run() -> None:
        first = _session(daemon)
        untagged, _ = first.command("s", f"SELECT {INBOX}")
        uidvalidity = _code(untagged, b"UIDVALIDITY")
        known = _code(untagged, b"HIGHESTMODSEQ")
        first.close()

        other = _session(daemon, "martin", qresync=False)
        other.command("s", f"SELECT {INBOX}")
        other.command("t", "STORE 2 +FLAGS (\\Flagged)")
        other.command("d", "STORE 3:4 +FLAGS (\\Deleted)")
        other.command("x", "EXPUNGE")
        other.close()
        asyncio.run_coroutine_threadsafe(deliver(daemon.store, SHARED, [letter(6)]), loop).result(
            10
        )

        s = _session(daemon)
        untagged, final = s.command("s", f"SELECT {INBOX} (QRESYNC ({uidvalidity} {known}))")
        assert final.startswith(b"s OK [READ-WRITE]")
        at = untagged.index(b"* VANISHED (EARLIER) 3:4")
        assert untagged[at - 1].startswith(b"* OK [HIGHESTMODSEQ ")  # after the SELECT data
        fetches = [x for x in untagged if b" FETCH " in x]
        assert [re.search(rb"UID (\d+)", x).group(1) for x in fetches] == [b"2", b"6"]  # type: ignore[union-attr]
        assert b"\\Flagged" in fetches[0] and b"MODSEQ (" in fetches[0]
        s.command("u", "UNSELECT")

        # known UIDs narrow both parts; a sequence-match sample is accepted
        untagged, _ = s.command(
            "s2", f"SELECT {INBOX} (QRESYNC ({uidvalidity} {known} 1:2 (1:2 1:2)))"
        )
        assert not [x for x in untagged if b"VANISHED" in x]
        assert next(x for x in untagged if b" FETCH " in x).startswith(b"* 2 FETCH (UID 2 ")
        # another UIDVALIDITY: nothing but the plain SELECT answer
        untagged, final = s.command("s3", f"SELECT {INBOX} (QRESYNC ({uidvalidity + 1} {known}))")
        assert b"* OK [CLOSED] Previous mailbox closed" in untagged
        assert not [x for x in untagged if b"VANISHED" in x or b"FETCH" in x]

        # UID FETCH (CHANGEDSINCE n VANISHED): removals in the set first, then changes
        untagged, _ = s.command("f", f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {known} VANISHED)")
        assert untagged[0] == b"* VANISHED (EARLIER) 3:4"
        assert [re.search(rb"UID (\d+)", x).group(1) for x in untagged[1:]] == [b"2", b"6"]  # type: ignore[union-attr]
        untagged, _ = s.command("f2", f"UID FETCH 5:6 (FLAGS) (CHANGEDSINCE {known} VANISHED)")
        assert not [x for x in untagged if b"VANISHED" in x]
        s.close()

    await asyncio.to_thread(run)


async def test_live_removals_come_as_vanished(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(i) for i in range(1, 7)])

    def run() -> None:
        s = _session(daemon)
        s.command("s", f"SELECT {INBOX}")
        other = _session(daemon, "martin", qresync=False)
        other.command("s", f"SELECT {INBOX}")
        other.command("d", "STORE 1 +FLAGS.SILENT (\\Deleted)")
        other.command("x", "EXPUNGE")
        assert other.seen == [b"* 1 EXPUNGE"]  # a client without QRESYNC: EXPUNGE

        # held back during FETCH; a HIGHESTMODSEQ below the removal comes instead.
        # With QRESYNC every FETCH response names its UID.
        untagged, _ = s.command("f", "FETCH 1:* (FLAGS)")
        assert all(b"(UID " in x for x in untagged if b" FETCH " in x)
        assert not [x for x in untagged if b"VANISHED" in x or b"EXPUNGE" in x]
        below = _code(untagged, b"HIGHESTMODSEQ")
        untagged, _ = s.command("n", "NOOP")
        assert untagged == [b"* VANISHED 1"]
        # a client resynchronising from that HIGHESTMODSEQ learns of the removal
        untagged, _ = s.command("m", f"UID FETCH 1:* (UID) (CHANGEDSINCE {below} VANISHED)")
        assert untagged == [b"* VANISHED (EARLIER) 1"]

        # our own EXPUNGE and MOVE: VANISHED, and the tagged OK gives HIGHESTMODSEQ
        s.command("d", "UID STORE 2:3 +FLAGS.SILENT (\\Deleted)")
        untagged, final = s.command("x", "EXPUNGE")
        assert untagged == [b"* VANISHED 2:3"]
        assert final.startswith(b"x OK [HIGHESTMODSEQ ")
        untagged, final = s.command("mv", f"UID MOVE 5:6 {shared(SHARED, 'Trash')}")
        assert untagged[0].startswith(b"* OK [COPYUID ") and untagged[1] == b"* VANISHED 5:6"
        untagged, _ = s.command("a", "UID SEARCH ALL")
        assert untagged == [b"* SEARCH 4"]
        other.close()
        s.close()

    await asyncio.to_thread(run)
