"""CONDSTORE over the wire (RFC 7162 §3.1): enabling commands, MODSEQ on STORE answers
and on SEARCH results, HIGHESTMODSEQ, UNCHANGEDSINCE / MODIFIED."""

from __future__ import annotations

import asyncio
import re

from tests.harness import SHARED, RunningDaemon
from tests.imap.support import Raw, deliver, letter, shared

INBOX = shared(SHARED)


def _modseq(line: bytes) -> int:
    m = re.search(rb"MODSEQ \((\d+)\)", line)
    assert m, line
    return int(m.group(1))


async def test_fetch_modseq_enables_condstore(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(i) for i in range(1, 5)])

    def run() -> None:
        s = Raw(daemon)
        s.login("martin")
        untagged, _ = s.command("s", f"SELECT {INBOX}")
        assert any(x.startswith(b"* OK [HIGHESTMODSEQ ") for x in untagged)
        # not enabled yet: STORE answers carry no MODSEQ
        untagged, _ = s.command("t0", "STORE 4 +FLAGS (\\Draft)")
        assert b"MODSEQ" not in untagged[0]
        # FETCH MODSEQ is a CONDSTORE-enabling command: HIGHESTMODSEQ comes at once
        untagged, _ = s.command("f", "FETCH 1 MODSEQ")
        assert untagged[0].startswith(b"* OK [HIGHESTMODSEQ ")
        assert re.fullmatch(rb"\* 1 FETCH \(MODSEQ \(\d+\)\)", untagged[1])
        modseqs = {}
        for n in (1, 3, 2):
            untagged, _ = s.command(f"t{n}", f"STORE {n} +FLAGS (\\Seen)")
            assert untagged[-1].startswith(b"* %d FETCH (FLAGS (" % n)
            modseqs[n] = _modseq(untagged[-1])
        assert modseqs[1] < modseqs[3] < modseqs[2]
        # SEARCH with MODSEQ: the highest MODSEQ of what is returned
        untagged, _ = s.command("q1", "SEARCH MODSEQ 1")
        assert untagged == [b"* SEARCH 1 2 3 4 (MODSEQ %d)" % modseqs[2]]
        untagged, _ = s.command("q2", f"SEARCH MODSEQ {modseqs[2] + 1}")
        assert untagged == [b"* SEARCH"]
        untagged, _ = s.command("q3", 'SEARCH RETURN (MIN) 1:3 MODSEQ "/flags/\\\\seen" all 1')
        assert untagged == [b'* ESEARCH (TAG "q3") MIN 1 MODSEQ %d' % modseqs[1]]
        untagged, _ = s.command("q4", "SEARCH RETURN (MIN MAX) 2:3 MODSEQ 1")
        assert untagged == [b'* ESEARCH (TAG "q4") MIN 2 MAX 3 MODSEQ %d' % modseqs[2]]
        untagged, _ = s.command("q5", f"SEARCH RETURN (ALL) 2:3 MODSEQ {modseqs[2]}")
        assert untagged == [b'* ESEARCH (TAG "q5") ALL 2 MODSEQ %d' % modseqs[2]]
        # RFC 7162 §3.2.4: once enabled, every FETCH a flag change causes has UID and
        # MODSEQ (a .SILENT STORE, a FETCH that sets \Seen)
        untagged, _ = s.command("t5", "STORE 4 +FLAGS.SILENT (\\Answered)")
        assert re.fullmatch(rb"\* 4 FETCH \(UID 4 MODSEQ \(\d+\)\)", untagged[0]), untagged
        s.command("t6", "STORE 4 -FLAGS.SILENT (\\Seen)")
        untagged, _ = s.command("b", "FETCH 4 (BODY[HEADER.FIELDS (SUBJECT)])")
        answer = b"\r\n".join(untagged)  # the literal splits it into lines
        assert re.search(rb"UID 4\b", answer) and b"MODSEQ (" in answer
        assert b"\\Seen" in answer
        # UNCHANGEDSINCE: a message changed after it is left alone and named in MODIFIED
        _, final = s.command("u", f"STORE 1:2 (UNCHANGEDSINCE {modseqs[1]}) +FLAGS (\\Flagged)")
        assert final.startswith(b"u OK [MODIFIED 2]")
        s.close()

    await asyncio.to_thread(run)


async def test_other_sessions_changes_carry_modseq_once_enabled(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(1)])

    def run() -> None:
        watcher = Raw(daemon)
        watcher.login("dupont")
        watcher.command("e", "ENABLE CONDSTORE")
        watcher.command("s", f"SELECT {INBOX}")
        other = Raw(daemon)
        other.login("martin")
        other.command("s", f"SELECT {INBOX}")
        other.command("t", "STORE 1 +FLAGS (\\Answered)")
        untagged, _ = watcher.command("n", "NOOP")
        fetch = next(x for x in untagged if b"FETCH" in x)
        assert b"\\Answered" in fetch and b"MODSEQ (" in fetch and b"UID 1" in fetch
        watcher.close()
        other.close()

    await asyncio.to_thread(run)
