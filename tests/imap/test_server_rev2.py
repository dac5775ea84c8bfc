"""IMAP4rev2 (RFC 9051) over the wire: both revisions advertised, ``ENABLE IMAP4rev2``
(§6.3.1), and what changes after it (ESEARCH for SEARCH, no \\Recent anywhere, the
LIST and CLOSED of SELECT, STATUS SIZE and DELETED, UTF-8 mailbox names), beside an
IMAP4rev1 session that is unchanged."""

from __future__ import annotations

import asyncio
import re

from tests.harness import SHARED, RunningDaemon
from tests.imap.support import Raw, deliver, letter, shared

INBOX = shared(SHARED)


def _session(d: RunningDaemon, *, rev2: bool) -> Raw:
    s = Raw(d)
    s.login("martin")
    if rev2:
        untagged, final = s.command("e", "ENABLE IMAP4rev2")
        assert untagged == [b"* ENABLED IMAP4rev2"] and final.startswith(b"e OK")
    return s


def _capabilities(s: Raw, tag: str) -> list[bytes]:
    untagged, final = s.command(tag, "CAPABILITY")
    assert final.startswith(tag.encode() + b" OK")
    line = next(x for x in untagged if x.startswith(b"* CAPABILITY "))
    return line.split()[2:]


async def test_capability_lists_both_revisions_and_enable_leaves_it_alone(
    daemon: RunningDaemon,
) -> None:
    def run() -> None:
        s = Raw(daemon)
        before_login = _capabilities(s, "c0")
        assert before_login[:2] == [b"IMAP4rev1", b"IMAP4rev2"]
        s.login("martin")
        before = _capabilities(s, "c1")
        assert b"IMAP4rev1" in before and b"IMAP4rev2" in before and b"ENABLE" in before
        assert b"STATUS=SIZE" in before  # RFC 8438, folded into IMAP4rev2
        # any case; unknown names are ignored; only what this ENABLE turned on is named
        untagged, final = s.command("e1", "ENABLE imap4REV2 X-UNKNOWN")
        assert untagged == [b"* ENABLED IMAP4rev2"] and final.startswith(b"e1 OK")
        untagged, _ = s.command("e2", "ENABLE IMAP4rev2 CONDSTORE")
        assert untagged == [b"* ENABLED CONDSTORE"]
        untagged, _ = s.command("e3", "ENABLE IMAP4rev2")
        assert untagged == [b"* ENABLED"]  # sent even when nothing was enabled
        # RFC 9051 §6.3.1: CAPABILITY is the same after ENABLE
        assert _capabilities(s, "c2") == before
        s.close()

    await asyncio.to_thread(run)


async def test_a_rev2_session_searches_with_esearch_and_never_sees_recent(
    daemon: RunningDaemon,
) -> None:
    await deliver(daemon.store, SHARED, [letter(i) for i in range(1, 4)])
    loop = asyncio.get_running_loop()

    def run() -> None:
        s = _session(daemon, rev2=True)
        untagged, final = s.command("s", f"SELECT {INBOX}")
        assert final.startswith(b"s OK [READ-WRITE]")
        assert b"* 3 EXISTS" in untagged
        assert not [x for x in untagged if b"RECENT" in x or b"\\Recent" in x]
        # §6.3.2: the mailbox's LIST, with accurate attributes
        assert f'* LIST (\\HasNoChildren) "/" {INBOX}'.encode() in untagged
        assert any(x.startswith(b"* OK [UIDNEXT 4]") for x in untagged)
        assert any(x.startswith(b"* OK [UIDVALIDITY ") for x in untagged)
        assert any(x.startswith(b"* OK [PERMANENTFLAGS ") for x in untagged)

        # the messages were new to this session: still no \Recent in FLAGS
        untagged, _ = s.command("f", "FETCH 1:* (FLAGS)")
        assert len(untagged) == 3 and not [x for x in untagged if b"\\Recent" in x]

        # §6.4.4: ESEARCH, RETURN (ALL) when none is given; nothing found: no ALL
        untagged, final = s.command("q1", "SEARCH ALL")
        assert untagged == [b'* ESEARCH (TAG "q1") ALL 1:3'] and final.startswith(b"q1 OK")
        assert s.command("q2", "UID SEARCH 2:*")[0] == [b'* ESEARCH (TAG "q2") UID ALL 2:3']
        assert s.command("q3", "SEARCH SUBJECT nulle-part")[0] == [b'* ESEARCH (TAG "q3")']
        assert s.command("q4", "SEARCH RETURN (COUNT) ALL")[0] == [b'* ESEARCH (TAG "q4") COUNT 3']
        # RECENT, NEW and OLD are not in RFC 9051's grammar
        for i, key in enumerate(("RECENT", "NEW", "OLD", "OR SEEN RECENT")):
            untagged, final = s.command(f"r{i}", f"SEARCH {key}")
            assert final.startswith(f"r{i} BAD".encode()) and not untagged

        # STATUS SIZE and DELETED; STATUS RECENT refused
        s.command("d", "STORE 1,3 +FLAGS.SILENT (\\Deleted)")
        untagged, final = s.command("st", f"STATUS {INBOX} (MESSAGES SIZE DELETED)")
        m = re.fullmatch(
            rb'\* STATUS "Partages/[^"]+/INBOX" \(MESSAGES 3 SIZE (\d+) DELETED 2\)', untagged[0]
        )
        assert m is not None and int(m.group(1)) > 0, untagged
        untagged, final = s.command("st2", f"STATUS {INBOX} (MESSAGES RECENT)")
        assert final.startswith(b"st2 BAD") and not untagged
        assert s.command("ls", 'LIST "" "*" RETURN (STATUS (RECENT))')[1].startswith(b"ls BAD")

        # a new message: EXISTS without RECENT, and no \Recent on it either
        asyncio.run_coroutine_threadsafe(deliver(daemon.store, SHARED, [letter(4)]), loop).result(
            10
        )
        untagged, _ = s.command("n", "NOOP")
        assert b"* 4 EXISTS" in untagged and not [x for x in untagged if b"RECENT" in x]
        untagged, _ = s.command("f2", "FETCH 4 (FLAGS)")
        assert untagged == [b"* 4 FETCH (FLAGS ())"]

        # §6.3.2: SELECT of another mailbox closes the first with OK [CLOSED]
        untagged, final = s.command("s2", f"EXAMINE {INBOX}")
        assert untagged[0].startswith(b"* OK [CLOSED]") and final.startswith(b"s2 OK [READ-ONLY]")
        s.close()

    await asyncio.to_thread(run)


async def test_a_rev1_session_is_unchanged(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(i) for i in range(1, 4)])

    def run() -> None:
        s = _session(daemon, rev2=False)
        untagged, _ = s.command("s", f"SELECT {INBOX}")
        assert b"* 3 RECENT" in untagged
        assert not [x for x in untagged if x.startswith(b"* LIST")]
        untagged, _ = s.command("f", "FETCH 1 (FLAGS)")
        assert untagged == [b"* 1 FETCH (FLAGS (\\Recent))"]
        assert s.command("q", "SEARCH ALL")[0] == [b"* SEARCH 1 2 3"]
        assert s.command("q2", "SEARCH RECENT")[0] == [b"* SEARCH 1 2 3"]
        untagged, _ = s.command("st", f"STATUS {INBOX} (RECENT DELETED)")
        assert untagged[0].endswith(b"(RECENT 0 DELETED 0)")  # this session took them
        untagged, _ = s.command("s2", f"SELECT {INBOX}")
        assert not [x for x in untagged if b"[CLOSED]" in x]  # only with QRESYNC in rev1
        s.close()

    await asyncio.to_thread(run)


async def test_a_rev2_session_names_mailboxes_in_utf8(daemon: RunningDaemon) -> None:
    def run() -> None:
        old = _session(daemon, rev2=False)
        new = _session(daemon, rev2=True)
        assert new.command("c", 'CREATE "Envoyés/Reçus"')[1].startswith(b"c OK")
        assert old.command("c", 'CREATE "A&-B"')[1].startswith(b"c OK")

        # a rev1 client sees modified UTF-7, a rev2 client UTF-8 (and "&" as itself)
        untagged, _ = old.command("l", 'LIST "" "*"')
        assert b'* LIST (\\HasChildren) "/" "Envoy&AOk-s"' in untagged
        assert b'* LIST (\\HasNoChildren) "/" "Envoy&AOk-s/Re&AOc-us"' in untagged
        untagged, _ = new.command("l", 'LIST "" "*"')
        assert '* LIST (\\HasChildren) "/" "Envoyés"'.encode() in untagged
        assert '* LIST (\\HasNoChildren) "/" "Envoyés/Reçus"'.encode() in untagged
        assert b'* LIST (\\HasNoChildren) "/" "A&B"' in untagged
        assert not [x for x in untagged if b"&AOk-" in x]
        # patterns match the UTF-8 names, a wildcard next to a non-ASCII letter included
        untagged, _ = new.command("l2", 'LIST "" "*ç*"')
        assert untagged == ['* LIST (\\HasNoChildren) "/" "Envoyés/Reçus"'.encode()]
        untagged, _ = new.command("l3", 'LIST "Envoyés/" "%"')
        assert untagged == ['* LIST (\\HasNoChildren) "/" "Envoyés/Reçus"'.encode()]

        # a name typed decomposed is made in NFC, and the client is told (OLDNAME)
        untagged, final = new.command("c2", 'CREATE "Donne\u0301es"')
        assert final.startswith(b"c2 OK")
        assert untagged == ['* LIST () "/" "Données" ("OLDNAME" ("Donne\u0301es"))'.encode()]
        assert old.command("l4", 'LIST "" "Donn*"')[0] == [
            b'* LIST (\\HasNoChildren) "/" "Donn&AOk-es"'
        ]

        # the same folder by its UTF-8 name (decomposed é too) and by the old name
        untagged, final = new.command("s", 'SELECT "Envoye\u0301s/Reçus"')
        assert final.startswith(b"s OK")
        assert '* LIST (\\HasNoChildren) "/" "Envoyés/Reçus"'.encode() in untagged
        untagged, _ = new.command("st", 'STATUS "A&B" (MESSAGES)')
        assert untagged == [b'* STATUS "A&B" (MESSAGES 0)']
        assert old.command("s", 'SELECT "Envoy&AOk-s/Re&AOc-us"')[1].startswith(b"s OK")
        # in a rev2 session "&AOk-" is five characters: no such folder
        assert new.command("s2", 'SELECT "Envoy&AOk-s"')[1].startswith(b"s2 NO")
        old.close()
        new.close()

    await asyncio.to_thread(run)


async def test_a_rev2_session_names_utf8_mailboxes_in_imap_urls(daemon: RunningDaemon) -> None:
    def run() -> None:
        s = _session(daemon, rev2=True)
        message = letter(1)
        for i, name in enumerate(("Reçus", "A&B")):
            assert s.command(f"c{i}", f'CREATE "{name}"')[1].startswith(f"c{i} OK".encode())
            s.send(f'a{i} APPEND "{name}" {{{len(message)}+}}'.encode())
            s.send(message)
            assert s.until(f"a{i} ".encode()).startswith(f"a{i} OK [APPENDUID".encode())
        # RFC 4469 URLs hold the names as the client lists them: UTF-8, percent-encoded
        for i, url in enumerate(("/Re%C3%A7us/;UID=1", "/A&B/;UID=1")):
            _, final = s.command(f"u{i}", f'APPEND INBOX CATENATE (URL "{url}")')
            assert final.startswith(f"u{i} OK [APPENDUID".encode()), final
        _, final = s.command("u3", 'APPEND INBOX CATENATE (URL "/A&-B/;UID=1")')
        assert final.startswith(b'u3 NO [BADURL "/A&-B/;UID=1"]'), final
        s.close()

    await asyncio.to_thread(run)


async def test_enable_with_a_mailbox_selected_stops_showing_recent(daemon: RunningDaemon) -> None:
    # Clients MUST NOT do this, servers need not check (RFC 9051 §6.3.1): should one,
    # \Recent is gone from then on, not half shown.
    await deliver(daemon.store, SHARED, [letter(1)])

    def run() -> None:
        s = _session(daemon, rev2=False)
        s.command("s", f"SELECT {INBOX}")
        assert s.command("f", "FETCH 1 (FLAGS)")[0] == [b"* 1 FETCH (FLAGS (\\Recent))"]
        assert s.command("e", "ENABLE IMAP4rev2")[0] == [b"* ENABLED IMAP4rev2"]
        assert s.command("f2", "FETCH 1 (FLAGS)")[0] == [b"* 1 FETCH (FLAGS ())"]
        assert s.command("q", "SEARCH ALL")[0] == [b'* ESEARCH (TAG "q") ALL 1']
        s.close()

    await asyncio.to_thread(run)
