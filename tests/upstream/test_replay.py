"""Gateway mode, UP: local changes to a mirrored box, journaled by the store, replayed
to a real Dovecot standing in for the operator (`relay.upstream.replayer`), on both
engines: in order, once, across a replay cut short; refusals recorded, audited and
undone locally; the operator winning a flag conflict (CONDSTORE)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aioimaplib
import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.audit.events import ImapFolderChanged
from relay.config.model import StorageConfig, UpstreamConfig
from relay.message.analysis import analyse
from relay.store import schema as t
from relay.store.mailstore import MailStore
from relay.store.mirror import MirrorStore
from relay.store.store import AuditFilter, Store, TxContext
from relay.store.upjournal import ReplayStore
from relay.tls.pki import DevPki
from relay.upstream.cli import render_status
from relay.upstream.connection import UpstreamSession, open_session
from relay.upstream.replay import OperatorCaps
from relay.upstream.replayer import Replayer
from tests.harness import SHARED, RunningDaemon
from tests.imap.support import answer, deliver, letter, login, ok, shared
from tests.upstream.conftest import BOX_LOGIN, BOX_PASSWORD, password_file, upstream_config
from tests.upstream.dovecot import Dovecot

BOX = SHARED  # the test config's shared box; mirrored in these tests


@dataclass
class OperatorBox:
    """The box at the operator (the `dovecot` fixture's `cpts`) and the sessions
    opened to it by `relay.upstream.connection` (logged out at the end)."""

    dovecot: Dovecot
    config: UpstreamConfig
    sessions: list[UpstreamSession]

    async def session(self) -> aioimaplib.IMAP4:
        session = await open_session(BOX, self.config)
        self.sessions.append(session)
        return session.client


@pytest.fixture
async def operator_box(
    dovecot: Dovecot, dev_pki: DevPki, tmp_path: Path
) -> AsyncIterator[OperatorBox]:
    config = upstream_config(dovecot, dev_pki, password=password_file(tmp_path, BOX_PASSWORD))
    box = OperatorBox(dovecot, config, [])
    yield box
    for session in box.sessions:
        await session.logout()


_FETCH = re.compile(rb"UID (\d+)|MODSEQ \((\d+)\)|FLAGS \(([^)]*)\)")


def _event(person: str = "martin") -> ImapFolderChanged:
    return ImapFolderChanged(person=person, box=BOX, folder="x", operation="create")


async def _remote(client: aioimaplib.IMAP4, folder: str) -> dict[int, tuple[int, set[str]]]:
    """UID -> (MODSEQ, FLAGS) of every message of `folder` at the operator."""
    r = await client.select(folder)
    assert r.result == "OK", r
    r = await client.uid("fetch", "1:*", "(UID MODSEQ FLAGS)")
    assert r.result == "OK", r
    out: dict[int, tuple[int, set[str]]] = {}
    for line in r.lines:
        if b" FETCH " not in line:
            continue
        uid = modseq = 0
        flags: set[str] = set()
        for m in _FETCH.finditer(line):
            if m.group(1):
                uid = int(m.group(1))
            elif m.group(2):
                modseq = int(m.group(2))
            else:
                flags = set(m.group(3).decode().split())
        out[uid] = (modseq, flags - {"\\Recent"})
    return out


async def _link(store: Store, client: aioimaplib.IMAP4, folder: str) -> None:
    """What the down sync leaves: the local folder linked to the operator's, each local
    message mapped to the remote one in the same position."""
    mail = MailStore(store)
    info = await mail.folder(BOX, folder)
    assert info is not None
    _, local = await mail.snapshot(BOX, folder, None)
    r = await client.select(folder)
    validity = int(re.search(rb"UIDVALIDITY (\d+)", b" ".join(r.lines)).group(1))  # type: ignore[union-attr]
    remote = await _remote(client, folder)
    assert len(remote) == len(local)

    async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
        await conn.execute(
            insert(t.upstream_folders).values(
                folder_id=info.id,
                box=BOX,
                remote_name=folder,
                uidvalidity=validity,
                highestmodseq=0,
                uidnext=0,
                resync=False,
            )
        )
        for msg, (ruid, (modseq, flags)) in zip(local, sorted(remote.items()), strict=True):
            await conn.execute(
                insert(t.upstream_messages).values(
                    folder_id=info.id,
                    remote_uid=ruid,
                    local_uid=msg.uid,
                    modseq=modseq,
                    flags=" ".join(sorted(flags)),
                )
            )

    await store.transact(unit)


async def _setup(
    store: Store, box: OperatorBox, n: int = 3
) -> tuple[MailStore, aioimaplib.IMAP4, Replayer, int]:
    """A box mirrored with `n` letters in INBOX on both sides, and an empty Sent."""
    client = await box.session()
    r = await client.protocol.simple_command("ENABLE", "CONDSTORE")
    assert r.result == "OK"
    for i in range(1, n + 1):
        assert (await client.append(letter(i), mailbox="INBOX")).result == "OK"
    assert (await client.create("Sent")).result == "OK"
    await MirrorStore(store).ensure_boxes([BOX])
    await deliver(store, BOX, [letter(i) for i in range(1, n + 1)])
    await _link(store, client, "INBOX")
    await _link(store, client, "Sent")
    operator = await box.session()
    await operator.protocol.simple_command("ENABLE", "CONDSTORE")
    caps = OperatorCaps.from_capabilities(operator.protocol.capabilities)
    assert caps == OperatorCaps(condstore=True, uidplus=True, move=True)
    mail = MailStore(store)
    inbox = await mail.folder(BOX, "INBOX")
    assert inbox is not None
    return mail, client, Replayer(store, BOX, operator, caps), inbox.id


async def test_flags_expunge_in_order_once(
    store: Store,
    operator_box: OperatorBox,
) -> None:
    mail, client, replayer, inbox = await _setup(store, operator_box)
    await mail.store_flags(inbox, [1, 2], "+FLAGS", frozenset({"\\Flagged"}), person=None)
    await mail.store_flags(inbox, [1], "-FLAGS", frozenset({"\\Flagged"}), person=None)
    await mail.store_flags(inbox, [3], "+FLAGS", frozenset({"\\Deleted", "$Urgent"}), person=None)
    await mail.expunge(inbox, None, lambda uids, mids: None)
    # Both flag changes on message 1 went in one round: the second carried the MODSEQ
    # the first one's answer gave (else UNCHANGEDSINCE would refuse our own change).
    report = await replayer.run()
    assert (report.done, report.refused, report.retry) == (4, 0, None)
    remote = await _remote(client, "INBOX")
    assert {uid: flags for uid, (_, flags) in remote.items()} == {1: set(), 2: {"\\Flagged"}}
    assert await MirrorStore(store).journal(BOX) == []
    rs = ReplayStore(store)
    maps = await rs.remote_uids(inbox, [1, 2, 3])
    assert sorted(maps) == [1, 2]  # the expunged one is no longer mapped
    assert maps[2].modseq == remote[2][0] and maps[2].flags == {"\\Flagged"}
    # Nothing left: a second round sends nothing.
    assert (await replayer.run()).done == 0
    [box] = await MirrorStore(store).boxes()
    assert box.replayed == 4


async def test_operator_wins_a_flag_conflict(
    store: Store,
    operator_box: OperatorBox,
) -> None:
    mail, client, replayer, inbox = await _setup(store, operator_box)
    # The operator's webmail changes message 2 after the last mirror...
    await client.select("INBOX")
    assert (await client.uid("store", "2", "+FLAGS", "($Work)")).result == "OK"
    # ... and a co-holder flags it here in the same interval.
    await mail.store_flags(inbox, [1, 2], "+FLAGS", frozenset({"\\Flagged"}), person=None)
    report = await replayer.run()
    assert report.done == 1
    remote = await _remote(client, "INBOX")
    assert remote[1][1] == {"\\Flagged"}
    assert remote[2][1] == {"$Work"}  # UNCHANGEDSINCE refused it: the operator's state

    async def resync(conn: AsyncConnection) -> bool:
        value = await conn.execute(
            select(t.upstream_folders.c.resync).where(t.upstream_folders.c.folder_id == inbox)
        )
        return bool(value.scalar_one())

    assert await store.read(resync)


async def test_append_to_sent_once_across_a_cut_replay(
    store: Store,
    operator_box: OperatorBox,
) -> None:
    mail, client, replayer, _ = await _setup(store, operator_box)
    sent = letter(10, subject="Envoi")
    _, uid = await mail.append(
        BOX,
        "Sent",
        sent,
        analyse(sent),
        frozenset({"\\Seen"}),
        dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC),
        person=None,
        make_event=lambda uid: None,
    )
    [row] = await MirrorStore(store).journal(BOX)
    rs = ReplayStore(store)
    # A replay cut between the operator's OK and the local commit (SIGKILL): the row
    # is in flight and the message is at the operator already.
    await rs.mark_in_flight(row.id, {"append": [uid]})
    assert (await client.append(sent, mailbox="Sent", flags="(\\Seen)")).result == "OK"
    report = await replayer.run()
    assert (report.done, report.refused) == (1, 0)
    remote = await _remote(client, "Sent")
    assert len(remote) == 1  # not sent a second time
    sent_folder = await mail.folder(BOX, "Sent")
    assert sent_folder is not None
    [ruid] = remote
    assert (await rs.remote_uids(sent_folder.id, [uid]))[uid].remote_uid == ruid

    # A plain one: APPENDUID maps it; flags and internal date go with it.
    other = letter(11, subject="Envoi 2")
    _, uid2 = await mail.append(
        BOX,
        "Sent",
        other,
        analyse(other),
        frozenset({"\\Seen"}),
        dt.datetime(2026, 3, 2, 9, 5, tzinfo=dt.UTC),
        person=None,
        make_event=lambda uid: None,
    )
    assert (await replayer.run()).done == 1
    remote = await _remote(client, "Sent")
    assert len(remote) == 2
    mapped = (await rs.remote_uids(sent_folder.id, [uid2]))[uid2].remote_uid
    assert remote[mapped][1] == {"\\Seen"}
    r = await client.uid("fetch", str(mapped), "(INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"02-Mar-2026 09:05:00 +0000" in b" ".join(r.lines) and b"Envoi 2" in b"".join(
        bytes(x) for x in r.lines
    )


async def test_folders_copy_and_move(
    store: Store,
    operator_box: OperatorBox,
) -> None:
    mail, client, replayer, inbox = await _setup(store, operator_box)
    await mail.create_folder(BOX, "Archives", None, _event())
    archives = await mail.folder(BOX, "Archives")
    assert archives is not None
    for move, uid in ((False, 1), (True, 2)):
        await mail.copy(
            inbox,
            [uid],
            archives.id,
            source_person=None,
            dest_person=None,
            move=move,
            make_event=lambda s, m: None,
        )
    await mail.create_folder(BOX, "Vieux", None, _event())
    await mail.rename_folder(BOX, "Vieux", "Ancien", _event())
    await mail.create_folder(BOX, "Jetable", None, _event())
    await mail.delete_folder(BOX, "Jetable", _event())
    report = await replayer.run()
    assert (report.done, report.refused, report.retry) == (7, 0, None)
    assert sorted(await _remote(client, "INBOX")) == [1, 3]  # 2 moved out
    in_archives = await _remote(client, "Archives")
    assert len(in_archives) == 2
    maps = await ReplayStore(store).remote_uids(archives.id, [1, 2])
    assert sorted(m.remote_uid for m in maps.values()) == sorted(in_archives)
    r = await client.list('""', "*")
    names = {line.rsplit(b" ", 1)[-1].strip(b'"') for line in r.lines[:-1]}
    assert {b"Archives", b"Ancien"} <= names and not names & {b"Vieux", b"Jetable"}


async def test_refused_rename_is_recorded_audited_and_undone(
    store: Store,
    operator_box: OperatorBox,
) -> None:
    mail, client, replayer, inbox = await _setup(store, operator_box)
    assert (await client.create("Pris")).result == "OK"  # taken at the operator only
    await mail.create_folder(BOX, "Dossiers", None, _event("martin"))
    await mail.rename_folder(BOX, "Dossiers", "Pris", _event("dupont"))
    # A later change still goes up after the refusal (order kept, nothing stuck).
    await mail.store_flags(inbox, [3], "+FLAGS", frozenset({"\\Answered"}), person=None)
    report = await replayer.run()
    assert (report.done, report.refused) == (2, 1)
    [refused] = await ReplayStore(store).refused_changes(BOX)
    assert (refused.kind, refused.folder, refused.person) == ("rename", "Dossiers", "dupont")
    assert refused.answer is not None and "ALREADYEXISTS" in refused.answer
    # Brought back to the operator's state: the local folder has its old name again.
    assert await mail.folder(BOX, "Dossiers") is not None
    assert await mail.folder(BOX, "Pris") is None
    [audit] = await store.audit_rows(AuditFilter(action="upstream.change_refused"))
    assert (audit.person, audit.box) == ("dupont", BOX)
    details = json.loads(audit.data)["details"]
    assert details["kind"] == "rename" and details["restored"] == "the folder renamed back"
    [box] = await MirrorStore(store).boxes()
    assert box.last_error is not None and "refused" in box.last_error
    assert (await _remote(client, "INBOX"))[3][1] == {"\\Answered"}
    # Visible in `mss-relay upstream status`: the change, who made it, the answer.
    changes = await ReplayStore(store).refused_changes(BOX)
    text = render_status(
        [box], {}, {}, {BOX: 1}, dt.datetime.now(dt.UTC), refused_changes={BOX: changes}
    )
    [line] = [x for x in text.splitlines() if x.startswith(f"    #{refused.id} ")]
    assert " rename Dossiers by dupont: NO [ALREADYEXISTS]" in line


async def test_refused_append_removes_the_local_copy(
    store: Store,
    operator_box: OperatorBox,
) -> None:
    mail, _, replayer, _ = await _setup(store, operator_box)
    # The operator lost its Drafts (deleted in its webmail): the APPEND is refused.
    drafts = await mail.folder(BOX, "Drafts")
    assert drafts is not None

    async def link(conn: AsyncConnection, ctx: TxContext) -> None:
        await conn.execute(
            insert(t.upstream_folders).values(
                folder_id=drafts.id,
                box=BOX,
                remote_name="Drafts",
                uidvalidity=0,
                highestmodseq=0,
                uidnext=0,
                resync=False,
            )
        )

    await store.transact(link)
    draft = letter(20, subject="Brouillon")
    await mail.append(
        BOX,
        "Drafts",
        draft,
        analyse(draft),
        frozenset({"\\Draft"}),
        dt.datetime.now(dt.UTC),
        person="dupont",
        make_event=lambda uid: None,
    )
    report = await replayer.run()
    assert report.refused == 1
    _, left = await mail.snapshot(BOX, "Drafts", None)
    assert left == []  # the operator has no such message: neither have we
    [refused] = await ReplayStore(store).refused_changes(BOX)
    assert refused.kind == "append" and refused.answer is not None
    assert refused.answer.startswith("NO ")


async def test_uidvalidity_change_waits_for_the_down_sync(
    store: Store,
    operator_box: OperatorBox,
) -> None:
    mail, _, replayer, inbox = await _setup(store, operator_box)

    async def bump(conn: AsyncConnection, ctx: TxContext) -> None:
        await conn.execute(
            update(t.upstream_folders)
            .where(t.upstream_folders.c.folder_id == inbox)
            .values(uidvalidity=1)
        )

    await store.transact(bump)
    await mail.store_flags(inbox, [1], "+FLAGS", frozenset({"\\Flagged"}), person=None)
    report = await replayer.run()
    # Not a broken session: the caller goes on with its down round (which re-matches).
    assert report.done == 0 and report.retry is None
    assert report.waiting is not None and "UIDVALIDITY" in report.waiting
    [row] = await MirrorStore(store).journal(BOX)
    assert row.state == "pending" and row.last_error is not None


async def test_read_only_replacement_cannot_delete_nothing_goes_up(
    daemon: RunningDaemon,
    operator_box: OperatorBox,
) -> None:
    """Leroy (a replacement with the read right only) tries every way to delete in the
    mirrored box: each is refused locally, nothing is journaled, the operator keeps
    all. Martin (delete right) does the same and it goes up: the test can fail."""
    _, client, replayer, _ = await _setup(daemon.store, operator_box, n=2)
    folder = shared(SHARED)

    def leroy() -> None:
        m = login(daemon, "leroy")
        ok(m.select(folder))
        typ, first = answer(m.store("1", "+FLAGS", "(\\Deleted)"))
        assert typ == "NO" and first.startswith(b"[NOPERM]")
        typ, first = answer(m.expunge())
        assert typ == "NO" and first.startswith(b"[NOPERM]")
        typ, _ = m._simple_command("UID", "MOVE", "1", shared(SHARED, "Trash"))
        assert typ == "NO"
        typ, _ = m._simple_command("UID", "EXPUNGE", "1")
        assert typ == "NO"
        m.logout()

    await asyncio.to_thread(leroy)
    assert await MirrorStore(daemon.store).journal(BOX) == []
    assert (await replayer.run()).done == 0
    remote = await _remote(client, "INBOX")
    assert {uid: flags for uid, (_, flags) in remote.items()} == {1: set(), 2: set()}

    def martin() -> None:
        m = login(daemon, "martin")
        ok(m.select(folder))
        ok(m.store("1", "+FLAGS", "(\\Deleted)"))
        ok(m.expunge())
        m.logout()

    await asyncio.to_thread(martin)
    rows = await MirrorStore(daemon.store).journal(BOX)
    assert [(r.kind, r.person) for r in rows] == [("flags", "martin"), ("expunge", "martin")]
    assert (await replayer.run()).done == 2
    assert sorted(await _remote(client, "INBOX")) == [2]


async def test_replay_sigkill_mid_append_sends_each_once(
    store: Store,
    storage: StorageConfig,
    operator_box: OperatorBox,
) -> None:
    """A replay process is SIGKILLed while it uploads 30 Sent copies (after the operator
    has some of them, so the kill lands between an APPEND and its commit or during
    one); the next replay finishes: the operator holds each message exactly once."""
    mail, client, replayer, _ = await _setup(store, operator_box, n=1)
    count = 30
    for i in range(count):
        raw = letter(100 + i, subject="Envoi", body="x" * 20_000)
        await mail.append(
            BOX,
            "Sent",
            raw,
            analyse(raw),
            frozenset({"\\Seen"}),
            dt.datetime.now(dt.UTC),
            person=None,
            make_event=lambda uid: None,
        )
    operator = operator_box.dovecot
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.upstream.replay_child",
        storage.url,
        str(storage.key_file),
        storage.schema or "",
        str(operator.imaps_port),
        str(operator_box.config.trust_anchors[0]),
        BOX_LOGIN,
        str(operator_box.config.password_file),
        BOX,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line == b"replaying\n", line
        # Kill once the child has committed 5 rows: it is in the middle of the stream
        # (an APPEND on the wire, or answered and not yet committed).
        mirror = MirrorStore(store)
        deadline = time.monotonic() + 30
        while len(await mirror.journal(BOX)) > count - 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    pending = await MirrorStore(store).journal(BOX)
    assert 0 < len(pending) < count
    report = await replayer.run()
    assert report.done == len(pending) and report.refused == 0
    assert await MirrorStore(store).journal(BOX) == []
    await client.select("Sent")
    r = await client.uid("fetch", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    mids = re.findall(rb"<m(\d+)@cabinet.example>", b"".join(bytes(x) for x in r.lines))
    assert sorted(int(m) for m in mids) == list(range(100, 100 + count))  # each once
    sent = await mail.folder(BOX, "Sent")
    assert sent is not None
    maps = await ReplayStore(store).remote_uids(sent.id, list(range(1, 1000)))
    assert len(maps) == count and len({m.remote_uid for m in maps.values()}) == count


async def test_fallbacks_without_uidplus_condstore_move(
    store: Store,
    operator_box: OperatorBox,
) -> None:
    """An operator offering none of UIDPLUS, CONDSTORE, MOVE (the replay is told so;
    Dovecot answers the plain commands the same): flags without UNCHANGEDSINCE,
    APPEND and COPY mapped by Message-ID, MOVE as COPY + \\Deleted + EXPUNGE."""
    mail, client, full, inbox = await _setup(store, operator_box)
    plain = Replayer(store, BOX, full.client, OperatorCaps(False, False, False))
    await mail.store_flags(inbox, [1], "+FLAGS", frozenset({"\\Flagged"}), person=None)
    raw = letter(30, subject="Envoi")
    _, sent_uid = await mail.append(
        BOX,
        "Sent",
        raw,
        analyse(raw),
        frozenset({"\\Seen"}),
        dt.datetime.now(dt.UTC),
        person=None,
        make_event=lambda uid: None,
    )
    sent = await mail.folder(BOX, "Sent")
    assert sent is not None
    await mail.copy(
        inbox,
        [2],
        sent.id,
        source_person=None,
        dest_person=None,
        move=True,
        make_event=lambda s, m: None,
    )
    report = await plain.run()
    assert (report.done, report.refused, report.retry) == (3, 0, None)
    remote_inbox = await _remote(client, "INBOX")
    assert sorted(remote_inbox) == [1, 3] and remote_inbox[1][1] == {"\\Flagged"}
    remote_sent = await _remote(client, "Sent")
    assert len(remote_sent) == 2
    maps = await ReplayStore(store).remote_uids(sent.id, [sent_uid, sent_uid + 1])
    assert sorted(m.remote_uid for m in maps.values()) == sorted(remote_sent)


async def test_client_sent_copy_reaches_the_operator_once(
    daemon: RunningDaemon,
    operator_box: OperatorBox,
) -> None:
    """Dupont's mail client saves its sent message in the shared box's Sent over IMAP
    (as after a submission): one APPEND goes up, once, whatever the rounds."""
    _, client, replayer, _ = await _setup(daemon.store, operator_box, n=1)
    sent = letter(40, subject="Envoi depuis Thunderbird")

    def dupont() -> None:
        m = login(daemon, "dupont")
        ok(m.append(shared(SHARED, "Sent"), "(\\Seen)", None, sent))
        m.logout()

    await asyncio.to_thread(dupont)
    [row] = await MirrorStore(daemon.store).journal(BOX)
    assert (row.kind, row.folder, row.person) == ("append", "Sent", "dupont")
    assert (await replayer.run()).done == 1
    assert (await replayer.run()).done == 0
    remote = await _remote(client, "Sent")
    # Read at the operator too: dupont's own \Seen (the box has per-person \Seen).
    assert [flags for _, flags in remote.values()] == [{"\\Seen"}]
    r = await client.uid("fetch", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert b"<m40@cabinet.example>" in b"".join(bytes(x) for x in r.lines)
