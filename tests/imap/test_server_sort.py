"""SORT, ESORT, THREAD, SEARCHRES and live search contexts over the wire (RFC 5256,
RFC 5267, RFC 5182, RFC 5957), on both engines, in the shared box as a co-holder."""

from __future__ import annotations

import asyncio

from tests.harness import SHARED, RunningDaemon
from tests.imap.support import Raw, deliver, shared

INBOX = shared(SHARED)


def mail(
    n: int,
    subject: str,
    date: str,
    *,
    sender: str = "Dr Martin <martin@cpts-demo.mssante.fr>",
    refs: str = "",
    body: str = "Bonjour.",
) -> bytes:
    head = (
        f"From: {sender}\r\nTo: <secretariat@cpts-demo.mssante.fr>\r\n"
        f"Subject: {subject}\r\nDate: {date}\r\nMessage-ID: <m{n}@x>\r\n"
    )
    if refs:
        head += f"References: {refs}\r\n"
    return (head + f"\r\n{body} {n}\r\n").encode()


MESSAGES = [
    mail(1, "Compte rendu", "Mon, 02 Mar 2026 10:00:00 +0100", sender="Zoé <z@x.fr>"),
    mail(2, "Re: Compte rendu", "Mon, 02 Mar 2026 09:30:00 +0000", refs="<m1@x>"),
    mail(3, "Analyses", "Sun, 01 Mar 2026 10:00:00 +0100", sender="anne@x.fr", body="urgent"),
    mail(4, "[labo] Re: Analyses", "Tue, 03 Mar 2026 10:00:00 +0100", refs="<m3@x>"),
    mail(5, "Fwd: Compte rendu", "Mon, 02 Mar 2026 11:00:00 +0100", refs="<gone@x>"),
]


def _setup(daemon: RunningDaemon, person: str = "dupont") -> Raw:
    raw = Raw(daemon)
    raw.login(person)
    _, final = raw.command("s", f"SELECT {INBOX}")
    assert final.startswith(b"s OK"), final
    return raw


async def test_sort_keys_and_reverse(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, MESSAGES)

    def run() -> None:
        raw = _setup(daemon)
        _, final = raw.command("c", "CAPABILITY")
        caps = raw.seen[0].split()
        for cap in (b"SORT", b"SORT=DISPLAY", b"ESORT", b"THREAD=REFERENCES", b"SEARCHRES"):
            assert cap in caps
        cases = {
            "SORT (DATE) UTF-8 ALL": b"* SORT 3 1 2 5 4",  # zones count: 1 is 09:00 UTC, 2 09:30
            "SORT (REVERSE DATE) UTF-8 ALL": b"* SORT 4 5 2 1 3",
            "SORT (SUBJECT) UTF-8 ALL": b"* SORT 3 4 1 2 5",  # base subjects, then number
            "SORT (SUBJECT REVERSE DATE) UTF-8 ALL": b"* SORT 4 3 5 2 1",
            "SORT (FROM) UTF-8 ALL": b"* SORT 3 2 4 5 1",  # anne, martin x3, z
            "SORT (DISPLAYFROM) UTF-8 ALL": b"* SORT 3 2 4 5 1",  # anne@x.fr, Dr Martin, Zoé
            "SORT (ARRIVAL) UTF-8 UNDELETED": b"* SORT 1 2 3 4 5",
            "UID SORT (SUBJECT) UTF-8 BODY urgent": b"* SORT 3",
            "SORT (SIZE) UTF-8 NOT ALL": b"* SORT",
        }
        for command, expected in cases.items():
            _, final = raw.command("t", command)
            assert final.startswith(b"t OK"), (command, final)
            assert raw.seen == [expected], (command, raw.seen)
        _, final = raw.command("e", "SORT RETURN (MIN MAX COUNT ALL) (SUBJECT) UTF-8 ALL")
        assert raw.seen == [b'* ESEARCH (TAG "e") MIN 3 MAX 5 ALL 3:4,1:2,5 COUNT 5']
        _, final = raw.command("p", "UID SORT RETURN (PARTIAL 2:3) (REVERSE DATE) UTF-8 ALL")
        assert raw.seen == [b'* ESEARCH (TAG "p") UID PARTIAL (2:3 5,2)']
        _, final = raw.command("x", "SORT (DATE) KOI8-R ALL")
        assert final.startswith(b"x NO [BADCHARSET]")
        _, final = raw.command("y", "SORT (COLOUR) UTF-8 ALL")
        assert final.startswith(b"y BAD")
        raw.close()

    await asyncio.to_thread(run)


async def test_thread_references_and_orderedsubject(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, MESSAGES)

    def run() -> None:
        raw = _setup(daemon)
        raw.command("t", "THREAD REFERENCES UTF-8 ALL")
        # 3 -> 4 by References; 1 -> 2 by References; 5 (a forward, its parent absent)
        # joins 1 by base subject as a reply
        assert raw.seen == [b"* THREAD (3 4)(1 (2)(5))"], raw.seen
        raw.command("t", "UID THREAD ORDEREDSUBJECT UTF-8 ALL")
        assert raw.seen == [b"* THREAD (3 4)(1 (2)(5))"], raw.seen
        raw.command("t", "THREAD REFERENCES UTF-8 SUBJECT Analyses")
        assert raw.seen == [b"* THREAD (3 4)"]
        raw.command("t", "THREAD REFERENCES UTF-8 NOT ALL")
        assert raw.seen == [b"* THREAD"]
        raw.close()

    await asyncio.to_thread(run)


async def test_searchres_dollar_in_fetch_store_search(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, MESSAGES)

    def run() -> None:
        raw = _setup(daemon)
        _, final = raw.command("a", "SEARCH RETURN (SAVE) SUBJECT Analyses")
        assert final.startswith(b"a OK") and raw.seen == []  # SAVE alone: no ESEARCH
        raw.command("b", "FETCH $ (UID)")
        assert raw.seen == [b"* 3 FETCH (UID 3)", b"* 4 FETCH (UID 4)"]
        raw.command("c", "STORE $ +FLAGS.SILENT (\\Flagged)")
        raw.command("d", "SEARCH FLAGGED")
        assert raw.seen == [b"* SEARCH 3 4"]
        raw.command("e", "UID SEARCH $ SUBJECT labo")
        assert raw.seen == [b"* SEARCH 4"]
        raw.command("f", "SEARCH RETURN (SAVE MIN) FROM martin")
        raw.command("g", "UID FETCH $ (UID)")
        assert raw.seen == [b"* 2 FETCH (UID 2)"]
        raw.command("h", "SORT RETURN (SAVE) (DATE) UTF-8 SUBJECT rendu")
        raw.command("i", "SEARCH $")
        assert raw.seen == [b"* SEARCH 1 2 5"]
        # after a new SELECT the saved result is empty (RFC 5182 §2.1)
        raw.command("s", f"SELECT {INBOX}")
        _, final = raw.command("j", "FETCH $ (UID)")
        assert final.startswith(b"j OK") and raw.seen == []
        raw.close()

    await asyncio.to_thread(run)


async def test_live_search_context_sends_addto_and_removefrom(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, MESSAGES[:3])

    def run() -> None:
        raw = _setup(daemon, "martin")  # the owner: may expunge
        other = _setup(daemon, "dupont")
        _, final = raw.command("u", "SEARCH RETURN (UPDATE ALL) FLAGGED")
        assert final.startswith(b"u OK")
        assert raw.seen == [b'* ESEARCH (TAG "u")']
        raw.command("a", "STORE 1,3 +FLAGS.SILENT (\\Flagged)")
        assert raw.seen == [b'* ESEARCH (TAG "u") ADDTO (0 1,3)']
        # another co-holder's change, seen at the next command
        other.command("b", "STORE 1 -FLAGS.SILENT (\\Flagged)")
        raw.command("n", "NOOP")
        assert b'* ESEARCH (TAG "u") REMOVEFROM (0 1)' in raw.seen, raw.seen
        # an expunge: REMOVEFROM names the message before its EXPUNGE
        raw.command("d", "STORE 3 +FLAGS.SILENT (\\Deleted)")
        raw.command("x", "EXPUNGE")
        assert raw.seen == [b'* ESEARCH (TAG "u") REMOVEFROM (0 3)', b"* 3 EXPUNGE"], raw.seen
        # a sorted live context gives positions
        raw.command("v", "UID SORT RETURN (UPDATE ALL) (REVERSE ARRIVAL) UTF-8 UNSEEN")
        assert raw.seen == [b'* ESEARCH (TAG "v") UID ALL 2,1']
        raw.command("k", 'CANCELUPDATE "u"')
        raw.command("f", "STORE 2 +FLAGS.SILENT (\\Seen \\Flagged)")
        assert raw.seen == [b'* ESEARCH (TAG "v") UID REMOVEFROM (1 2)'], raw.seen
        raw.close()
        other.close()

    await asyncio.to_thread(run)
