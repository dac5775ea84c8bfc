"""Folder commands over the wire: UIDVALIDITY after a delete, CREATE of a hierarchy,
RENAME with children, names made of atom characters, LIST-EXTENDED and LSUB, and a
long ID, on a personal box and on a shared box reached as ``person*box``."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import SHARED, RunningDaemon
from tests.imap.support import Raw, deliver, letter

ATOMS = "!#$&'+,-.0123456789:;<=>?@^_`|[}"


def _session(d: RunningDaemon, login: str | None) -> Raw:
    raw = Raw(d)
    raw.login("martin", login)
    return raw


@pytest.mark.parametrize("login", [None, f"martin*{SHARED}"])
async def test_recreated_folder_gets_a_new_uidvalidity(
    daemon: RunningDaemon, login: str | None
) -> None:
    def run() -> None:
        s = _session(daemon, login)
        seen = set()
        for i in range(3):  # within the same second: the value still changes
            assert s.command(f"c{i}", "CREATE Dossier")[1].startswith(b"c%d OK" % i)
            s.send(f"a{i} APPEND Dossier {{6+}}".encode())
            s.send(b"x: y\r\n")
            assert s.until(f"a{i} ".encode()).startswith(b"a%d OK [APPENDUID" % i)
            untagged, _ = s.command(f"s{i}", "STATUS Dossier (UIDVALIDITY UIDNEXT)")
            seen.add(untagged[0])
            assert s.command(f"d{i}", "DELETE Dossier")[1].startswith(b"d%d OK" % i)
        assert len(seen) == 3, seen
        s.close()

    await asyncio.to_thread(run)


@pytest.mark.parametrize("login", [None, f"martin*{SHARED}"])
async def test_create_makes_parents_and_rename_moves_children(
    daemon: RunningDaemon, login: str | None
) -> None:
    def run() -> None:
        s = _session(daemon, login)
        assert s.command("c", "CREATE a/b/c")[1].startswith(b"c OK")
        untagged, _ = s.command("l", 'LIST "" a*')
        assert untagged == [
            b'* LIST (\\HasChildren) "/" "a"',
            b'* LIST (\\HasChildren) "/" "a/b"',
            b'* LIST (\\HasNoChildren) "/" "a/b/c"',
        ]
        # CREATE of an existing name, and of one whose parents exist already
        assert s.command("c2", "CREATE a/b")[1].startswith(b"c2 NO [ALREADYEXISTS]")
        assert s.command("c3", "CREATE a/b/d")[1].startswith(b"c3 OK")
        # RENAME moves the children along and creates the new name's parents
        assert s.command("r", "RENAME a/b x/y")[1].startswith(b"r OK")
        untagged, _ = s.command("l2", 'LIST "" *')
        listed = {x.rsplit(b" ", 1)[1].strip(b'"') for x in untagged}
        assert {b"a", b"x", b"x/y", b"x/y/c", b"x/y/d"} <= listed
        assert not {b"a/b", b"a/b/c"} & listed
        assert s.command("r2", "RENAME x x/z")[1].startswith(b"r2 NO")  # under itself
        # RFC 3501 §6.3.4: DELETE of a folder with children keeps them; the name is
        # then a \Noselect parent, which itself cannot be deleted
        assert s.command("d", "DELETE x/y")[1].startswith(b"d OK")
        untagged, _ = s.command("l3", 'LIST "" x/*')
        assert untagged == [
            b'* LIST (\\Noselect \\HasChildren) "/" "x/y"',
            b'* LIST (\\HasNoChildren) "/" "x/y/c"',
            b'* LIST (\\HasNoChildren) "/" "x/y/d"',
        ]
        assert s.command("d2", "DELETE x/y")[1].startswith(b"d2 NO [NONEXISTENT]")
        assert s.command("d3", "SELECT x/y")[1].startswith(b"d3 NO")
        s.close()

    await asyncio.to_thread(run)


async def test_atom_names_get_no_not_bad_and_long_id_is_answered(daemon: RunningDaemon) -> None:
    def run() -> None:
        s = Raw(daemon)
        # RFC 2971 §3.3 at its limits: 30 fields, 1024-octet values (a 32 KiB line)
        pairs = " ".join(f'"field{i:02d}" "{"v" * 1024}"' for i in range(30))
        untagged, final = s.command("i", f"ID ({pairs})")
        assert final.startswith(b"i OK") and untagged[0].startswith(b'* ID ("name"')
        s.login("martin")
        # "&'+,-" is not valid modified UTF-7, but every character is an atom char
        _, final = s.command("a", f"SELECT {ATOMS}")
        assert final.startswith(b"a NO")
        untagged, final = s.command("b", f'LIST "" {ATOMS}%*')
        assert final.startswith(b"b OK") and untagged == []
        _, final = s.command("c", 'LIST "" ~foo')  # not a literal8
        assert final.startswith(b"c OK")
        _, final = s.command("d", "NOOP")  # still connected
        assert final.startswith(b"d OK")
        s.close()

    await asyncio.to_thread(run)


async def test_list_extended_and_lsub_over_the_wire(daemon: RunningDaemon) -> None:
    def run() -> None:
        s = _session(daemon, None)
        for name in ("t/one", "t/two/kid", "t/gone"):
            s.command("c", f"CREATE {name}")
        for name in ("t/one", "t/two/kid", "t/gone"):
            s.command("u", f"SUBSCRIBE {name}")
        s.command("d", "DELETE t/gone")
        untagged, _ = s.command("l1", 'LIST (SUBSCRIBED) "" t/*')
        assert untagged == [
            b'* LIST (\\NonExistent \\Subscribed) "/" "t/gone"',
            b'* LIST (\\HasNoChildren \\Subscribed) "/" "t/one"',
            b'* LIST (\\HasNoChildren \\Subscribed) "/" "t/two/kid"',
        ]
        untagged, _ = s.command("l2", 'LIST (SUBSCRIBED RECURSIVEMATCH) "" t/% RETURN (CHILDREN)')
        assert b'* LIST (\\HasChildren) "/" "t/two" ("CHILDINFO" ("SUBSCRIBED"))' in untagged
        _, final = s.command("l3", 'LIST (RECURSIVEMATCH) "" *')
        assert final.startswith(b"l3 BAD")
        _, final = s.command("l4", 'LIST (RECURSIVEMATCH REMOTE) "" *')
        assert final.startswith(b"l4 BAD")
        untagged, _ = s.command("l5", 'LIST "" t/% RETURN (SUBSCRIBED CHILDREN)')
        assert untagged == [
            b'* LIST (\\HasNoChildren \\Subscribed) "/" "t/one"',
            b'* LIST (\\HasChildren) "/" "t/two"',
        ]
        untagged, _ = s.command("s", 'LSUB "" t/%')
        assert untagged == [
            b'* LSUB (\\Noselect) "/" "t/gone"',
            b'* LSUB () "/" "t/one"',
            b'* LSUB (\\Noselect) "/" "t/two"',
        ]
        s.close()

    await asyncio.to_thread(run)


async def test_append_keeps_the_internaldate_zone(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(1)])

    def run() -> None:
        s = _session(daemon, None)
        for i, when in enumerate(
            (
                "17-Jul-1996 02:44:25 -0700",
                " 1-Feb-2026 23:30:00 +0530",
                "01-Jan-2000 00:00:00 +0000",
            )
        ):
            s.send(f'a{i} APPEND INBOX "{when}" {{6+}}'.encode())
            s.send(b"x: y\r\n")
            assert s.until(f"a{i} ".encode()).startswith(b"a%d OK" % i)
        s.command("s", "SELECT INBOX")
        untagged, _ = s.command("f", "FETCH 1:* (INTERNALDATE)")
        assert untagged == [
            b'* 1 FETCH (INTERNALDATE "17-Jul-1996 02:44:25 -0700")',
            b'* 2 FETCH (INTERNALDATE " 1-Feb-2026 23:30:00 +0530")',
            b'* 3 FETCH (INTERNALDATE " 1-Jan-2000 00:00:00 +0000")',
        ]
        # SINCE/BEFORE compare the date as given, in its own zone
        assert s.command("q1", "SEARCH ON 1-Feb-2026")[0] == [b"* SEARCH 2"]
        assert s.command("q2", "SEARCH BEFORE 18-Jul-1996")[0] == [b"* SEARCH 1"]
        s.close()

    await asyncio.to_thread(run)


async def test_folder_deleted_by_another_session_is_answered_as_missing(
    daemon: RunningDaemon,
) -> None:
    """A folder another session deletes between a command's check and its transaction
    (the check found it in memory) gets NO [TRYCREATE] for APPEND, NO [NONEXISTENT]
    for STATUS, never [SERVERBUG]; nothing else changes."""

    def run() -> None:
        a, b = _session(daemon, None), _session(daemon, None)
        assert a.command("c", "CREATE Archives")[1].startswith(b"c OK")
        assert a.command("s", "STATUS Archives (MESSAGES)")[1].startswith(b"s OK")
        assert b.command("d", "DELETE Archives")[1].startswith(b"d OK")
        raw = letter(1)
        a.send(b"a APPEND Archives {%d+}\r\n" % len(raw) + raw)
        assert a.until(b"a ").startswith(b"a NO [TRYCREATE]")
        assert a.command("s2", "STATUS Archives (MESSAGES)")[1].startswith(b"s2 NO [NONEXISTENT]")
        assert a.command("n", "NOOP")[1].startswith(b"n OK")
        a.close()
        b.close()

    await asyncio.to_thread(run)
