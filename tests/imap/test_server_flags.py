"""Flags over the wire: keywords announced before they are shown (RFC 3501 §7.2.6) and
\\Recent seen by exactly one session (RFC 3501 §2.3.2), on the shared box with two
co-holders at once and on a personal box."""

from __future__ import annotations

import asyncio
import re

from tests.harness import MARTIN_BOX, SHARED, RunningDaemon
from tests.imap.support import Raw, deliver, letter, shared

INBOX = shared(SHARED)


def _session(d: RunningDaemon, person: str, login: str | None = None) -> Raw:
    raw = Raw(d)
    raw.login(person, login)
    return raw


def _index(lines: list[bytes], pattern: bytes) -> int:
    for i, line in enumerate(lines):
        if re.search(pattern, line):
            return i
    raise AssertionError(f"{pattern!r} not in {lines!r}")


async def test_keywords_are_announced_before_any_fetch_shows_them(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(1), letter(2)])

    def run() -> None:
        watcher = _session(daemon, "dupont")
        untagged, final = watcher.command("s", f"SELECT {INBOX}")
        assert final.startswith(b"s OK [READ-WRITE]")
        assert b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)" in untagged
        assert any(b"[PERMANENTFLAGS (" in x and b"\\*)]" in x for x in untagged)

        tagger = _session(daemon, "martin")
        tagger.command("s", f"SELECT {INBOX}")
        untagged, final = tagger.command("t", "STORE 1 +FLAGS ($label1 $Forwarded)")
        assert final.startswith(b"t OK")
        # the tagger's own answer: FLAGS and PERMANENTFLAGS first, then the FETCH
        flags_at = _index(untagged, rb"^\* FLAGS \(.*\$Forwarded \$label1\)$")
        permanent_at = _index(untagged, rb"PERMANENTFLAGS \(.*\$Forwarded \$label1 \\\*\)")
        fetch_at = _index(untagged, rb"^\* 1 FETCH \(FLAGS \(")
        assert flags_at < permanent_at < fetch_at

        # the other co-holder learns of it in the same order
        untagged, _ = watcher.command("n", "NOOP")
        flags_at = _index(untagged, rb"^\* FLAGS \(.*\$Forwarded \$label1\)$")
        fetch_at = _index(untagged, rb"^\* 1 FETCH \(FLAGS \(.*\$label1")
        assert flags_at < fetch_at
        # a keyword already announced is not announced again
        tagger.command("t2", "STORE 2 +FLAGS ($label1)")
        untagged, _ = watcher.command("n2", "NOOP")
        assert not [x for x in untagged if x.startswith(b"* FLAGS")]
        assert any(b"2 FETCH (FLAGS (" in x and b"$label1" in x for x in untagged)
        watcher.close()
        tagger.close()

        # a new session finds the keywords in use in its SELECT's FLAGS
        later = _session(daemon, "martin")
        untagged, _ = later.command("s", f"SELECT {INBOX}")
        assert b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded $label1)" in (
            untagged
        )
        later.close()

    await asyncio.to_thread(run)


def _recent(lines: list[bytes]) -> int:
    return int(next(x for x in lines if x.endswith(b" RECENT")).split()[1])


async def test_recent_belongs_to_exactly_one_session(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(1), letter(2)])

    def run() -> None:
        a = _session(daemon, "martin")
        b = _session(daemon, "dupont")
        # EXAMINE shows \Recent without taking it; STATUS counts what nobody took
        untagged, _ = a.command("e", f"EXAMINE {INBOX}")
        assert _recent(untagged) == 2
        untagged, _ = a.command("f", "FETCH 1:2 (FLAGS)")
        assert untagged == [b"* 1 FETCH (FLAGS (\\Recent))", b"* 2 FETCH (FLAGS (\\Recent))"]
        a.command("c", "CLOSE")
        untagged, _ = b.command("st", f"STATUS {INBOX} (MESSAGES RECENT)")
        assert untagged[0].endswith(b"(MESSAGES 2 RECENT 2)")

        # the first SELECT takes them; the next session sees none
        untagged, _ = a.command("s", f"SELECT {INBOX}")
        assert _recent(untagged) == 2
        untagged, _ = b.command("s", f"SELECT {INBOX}")
        assert _recent(untagged) == 0
        _, final = b.command("st", f"STATUS {INBOX} (RECENT)")
        assert b.seen[0].endswith(b"(RECENT 0)") and final.startswith(b"st OK")
        untagged, _ = a.command("q", "SEARCH RECENT")
        assert untagged == [b"* SEARCH 1 2"]
        untagged, _ = b.command("q", "SEARCH OLD")
        assert untagged == [b"* SEARCH 1 2"]

        # a message arriving while both have the box selected: one of them gets it
        asyncio.run_coroutine_threadsafe(deliver(daemon.store, SHARED, [letter(3)]), loop).result(
            10
        )
        gained = []
        for name, s, before in (("a", a, 2), ("b", b, 0)):
            untagged, _ = s.command("n" + name, "NOOP")
            assert b"* 3 EXISTS" in untagged
            gained.append(_recent(untagged) - before)
            untagged, _ = s.command("f" + name, "FETCH 3 (FLAGS)")
            flags = b"(\\Recent)" if gained[-1] else b"()"
            assert untagged[0] == b"* 3 FETCH (FLAGS " + flags + b")"
        assert sorted(gained) == [0, 1]  # exactly one of the two sessions took it
        a.close()
        b.close()

    loop = asyncio.get_running_loop()
    await asyncio.to_thread(run)


async def test_recent_search_keys_and_store_keep_recent(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, MARTIN_BOX, [letter(i) for i in range(1, 6)])

    def run() -> None:
        s = _session(daemon, "martin")
        untagged, _ = s.command("s", "SELECT INBOX")
        assert _recent(untagged) == 5
        s.command("t1", "STORE 2 FLAGS (\\Seen \\Flagged)")
        untagged, _ = s.command("t2", "STORE 1 FLAGS ($hello)")
        # \Recent cannot be changed by STORE: FLAGS replaces the stored flags only
        assert untagged[-1] == b"* 1 FETCH (FLAGS (\\Recent $hello))"
        assert s.command("q1", "SEARCH NEW")[0] == [b"* SEARCH 1 3 4 5"]
        assert s.command("q2", "SEARCH OLD")[0] == [b"* SEARCH"]
        assert s.command("q3", "SEARCH RECENT")[0] == [b"* SEARCH 1 2 3 4 5"]
        assert s.command("q4", "SEARCH NOT RECENT")[0] == [b"* SEARCH"]
        s.close()
        # in a later session nothing is recent any more
        s = _session(daemon, "martin")
        untagged, _ = s.command("s", "SELECT INBOX")
        assert _recent(untagged) == 0
        assert s.command("q", "SEARCH RECENT")[0] == [b"* SEARCH"]
        s.close()

    await asyncio.to_thread(run)


async def test_search_numbers_follow_the_holes_left_by_expunge(daemon: RunningDaemon) -> None:
    """SEARCH answers message numbers, not UIDs: after an expunge they differ. Both ways
    of numbering are crossed, a few hits (one binary search each) and many (one pass
    over the folder's UIDs), and checked against FETCH UID."""
    await deliver(daemon.store, MARTIN_BOX, [letter(i) for i in range(1, 41)])

    def run() -> None:
        s = _session(daemon, "martin")
        s.command("s", "SELECT INBOX")
        thirds = ",".join(str(u) for u in range(3, 41, 3))
        assert s.command("d", f"UID STORE {thirds} +FLAGS.SILENT (\\Deleted)")[1].startswith(
            b"d OK"
        )
        assert s.command("e", "EXPUNGE")[1].startswith(b"e OK")
        s.command("f", "UID STORE 2,10,11,35 +FLAGS.SILENT (\\Flagged)")
        s.command("g", "UID STORE 1:20 +FLAGS.SILENT (\\Seen)")
        untagged, _ = s.command("u", "UID FETCH 1:* (UID)")
        number = {
            int(m[2]): int(m[1])
            for m in (re.match(rb"\* (\d+) FETCH \(UID (\d+)\)", x) for x in untagged)
            if m
        }
        kept = sorted(number)
        assert len(kept) == 27 and 3 not in number
        for key, want_uids in (
            ("FLAGGED", [2, 10, 11, 35]),
            ("UNSEEN", [u for u in kept if u > 20]),
            ("SEEN", [u for u in kept if u <= 20]),
        ):
            (by_uid,), _ = s.command("a", f"UID SEARCH {key}")
            assert by_uid == b"* SEARCH " + b" ".join(b"%d" % u for u in want_uids)
            (by_number,), _ = s.command("b", f"SEARCH {key}")
            assert by_number == b"* SEARCH " + b" ".join(b"%d" % number[u] for u in want_uids)
        s.close()

    await asyncio.to_thread(run)


async def test_an_expunge_with_nothing_to_remove_writes_nothing(daemon: RunningDaemon) -> None:
    """EXPUNGE, UID EXPUNGE and CLOSE that find no \\Deleted message (in the folder's
    index, current with every commit) answer without a transaction; one that does, even
    flagged by another session a moment before, removes it as ever."""
    await deliver(daemon.store, SHARED, [letter(1), letter(2), letter(3)])
    store = daemon.store

    def run() -> None:
        martin = _session(daemon, "martin")
        martin.command("s", f"SELECT {INBOX}")
        other = _session(daemon, "martin")  # a second session (dupont may not delete)
        other.command("s", f"SELECT {INBOX}")
        before = store.commits
        for tag, command in (("e", "EXPUNGE"), ("u", "UID EXPUNGE 1:3")):
            untagged, final = martin.command(tag, command)
            assert final.startswith(tag.encode() + b" OK")
            assert not [x for x in untagged if x.endswith(b" EXPUNGE")]
        assert store.commits == before, "an EXPUNGE with nothing to remove made a commit"

        # flagged by the other session; this one has not been told (no NOOP) and expunges
        assert other.command("d", "UID STORE 2 +FLAGS.SILENT (\\Deleted)")[1].startswith(b"d OK")
        flagged = store.commits
        untagged, _ = martin.command("u2", "UID EXPUNGE 1,3")  # not among these
        assert not [x for x in untagged if x.endswith(b" EXPUNGE")]
        assert store.commits == flagged
        untagged, final = martin.command("e2", "EXPUNGE")
        assert final.startswith(b"e2 OK") and b"* 2 EXPUNGE" in untagged
        assert store.commits > flagged

        assert martin.command("c", "CLOSE")[1].startswith(b"c OK")  # nothing left flagged
        martin.close()
        other.close()

    await asyncio.to_thread(run)
    assert [m.uid for m in await store.messages(SHARED)] == [1, 3]
