"""The in-memory folder index (relay.store.folderindex, relay.store.indexcache) gives
the same answers as the store's SQL, after every kind of change, on both engines."""

from __future__ import annotations

import random

from relay.store.folderindex import FolderIndex
from relay.store.indexcache import FolderIndexes
from relay.store.mailstore import SEEN, FolderInfo, FolderMissing, MailStore
from relay.store.store import Store
from tests.imap.support import deliver, letter

BOX = "secretariat@cpts-demo.mssante.fr"
PERSONS = (None, "dupont", "leroy")
FLAGS = ("\\Seen", "\\Deleted", "\\Flagged", "\\Answered", "$Forwarded")


async def _same_as_sql(mail: MailStore, indexes: FolderIndexes, folder_id: int) -> None:
    index = await indexes.get(folder_id)
    for person in PERSONS:
        assert index.status(person) == await mail.status(folder_id, person), person
        _, sql = await mail.snapshot(BOX, "INBOX", person)
        uids, flags, buckets = index.snapshot(person)
        assert uids == [f.uid for f in sql]
        assert flags == {f.uid: f for f in sql}
        filed: dict[frozenset[str], set[int]] = {}
        for f in sql:
            filed.setdefault(f.flags, set()).add(f.uid)
        assert {k: v for k, v in buckets.items() if v} == filed
        for since in sorted({index.base, index.folder.highestmodseq - 3, index.base + 1}):
            if since < index.base:
                assert index.changes(since, person) is None
                continue
            got = index.changes(since, person)
            want = await mail.changes(folder_id, since, person)
            assert got is not None
            assert got.changed == want.changed, (person, since)
            assert got.expunged_at == want.expunged_at
            assert (got.highestmodseq, got.uidnext) == (want.highestmodseq, want.uidnext)


async def test_index_follows_every_change(store: Store) -> None:
    mail = MailStore(store)
    indexes = FolderIndexes(mail)
    await deliver(store, BOX, [letter(n) for n in range(12)])
    inbox = await mail.folder(BOX, "INBOX")
    assert inbox is not None
    await _same_as_sql(mail, indexes, inbox.id)
    rng = random.Random(14)
    reads = indexes.reads
    for step in range(40):
        live = (await indexes.get(inbox.id)).uids
        kind = rng.choice(["flags", "flags", "seen", "expunge", "deliver"])
        if kind == "deliver" or not live:
            await deliver(store, BOX, [letter(100 + step)])
        elif kind == "expunge":
            await mail.expunge(inbox.id, None, lambda uids, mids: None)
        else:
            chosen = rng.sample(live, k=min(len(live), rng.randint(1, 4)))
            mode = rng.choice(["+FLAGS", "-FLAGS", "FLAGS"])
            flags = frozenset(rng.sample(FLAGS, k=rng.randint(0, 2)))
            person = rng.choice(["dupont", "leroy"]) if kind == "seen" else None
            if kind == "seen":
                flags = flags | {SEEN}
            await mail.store_flags(inbox.id, chosen, mode, flags, person=person)
        await _same_as_sql(mail, indexes, inbox.id)
    # One read per commit at most, shared by every question asked in between.
    assert indexes.reads - reads <= 40


async def test_a_read_since_a_modseq_gives_exactly_what_changed(store: Store) -> None:
    """What the index reads after a commit (one statement on PostgreSQL): the head,
    the rows changed or added above the MODSEQ, their per-person \\Seen rows and the
    UIDs removed, nothing older."""
    mail = MailStore(store)
    uids = await deliver(store, BOX, [letter(n) for n in range(5)])
    inbox = await mail.folder(BOX, "INBOX")
    assert inbox is not None
    await mail.store_flags(inbox.id, [uids[0]], "+FLAGS", frozenset({SEEN}), person="dupont")
    since = (await mail.index_read(inbox.id, None)).folder.highestmodseq
    await mail.store_flags(inbox.id, [uids[1]], "+FLAGS", frozenset({SEEN}), person="leroy")
    await mail.store_flags(inbox.id, [uids[2]], "+FLAGS", frozenset({"\\Flagged"}), person=None)
    await mail.store_flags(inbox.id, [uids[3]], "+FLAGS", frozenset({"\\Deleted"}), person=None)
    await mail.expunge(inbox.id, None, lambda uids, mids: None)
    (new,) = await deliver(store, BOX, [letter(9)])
    head = await mail.folder(BOX, "INBOX")
    assert head is not None

    got = await mail.index_read(inbox.id, since)

    assert got.folder == head
    assert sorted((uid, flags) for uid, _, flags, _ in got.rows) == [
        (uids[1], ""),
        (uids[2], "\\Flagged"),
        (new, ""),
    ]
    assert all(modseq > since for _, modseq, _, _ in got.rows)
    assert got.seen == [(uids[1], "leroy")]
    ((gone, at),) = got.gone
    assert gone == uids[3] and since < at <= head.highestmodseq
    nothing = await mail.index_read(inbox.id, head.highestmodseq)
    assert (nothing.rows, nothing.seen, nothing.gone) == ([], [], [])
    try:
        await mail.index_read(10_000, since)
    except FolderMissing:
        pass
    else:
        raise AssertionError("a folder that does not exist was read")


async def test_one_read_for_all_waiters(store: Store) -> None:
    import asyncio

    mail = MailStore(store)
    indexes = FolderIndexes(mail)
    await deliver(store, BOX, [letter(1), letter(2)])
    inbox = await mail.folder(BOX, "INBOX")
    assert inbox is not None
    await indexes.get(inbox.id)
    before = indexes.reads
    await deliver(store, BOX, [letter(3)])
    got = await asyncio.gather(*(indexes.get(inbox.id) for _ in range(10)))
    assert indexes.reads == before + 1
    assert all(g.messages == 3 for g in got)
    # No commit since: no read.
    await indexes.get(inbox.id)
    assert indexes.reads == before + 1


async def test_deleted_folder_is_forgotten(store: Store) -> None:
    from relay.audit.events import ImapFolderChanged

    mail = MailStore(store)
    indexes = FolderIndexes(mail)
    await mail.create_folder(
        BOX,
        "Archives",
        None,
        ImapFolderChanged(person="dupont", box=BOX, operation="create", folder="Archives"),
    )
    folder = await mail.folder(BOX, "Archives")
    assert folder is not None
    await indexes.get(folder.id)
    await mail.delete_folder(
        BOX,
        "Archives",
        ImapFolderChanged(person="dupont", box=BOX, operation="delete", folder="Archives"),
    )
    try:
        await indexes.get(folder.id)
    except FolderMissing:
        pass
    else:
        raise AssertionError("a deleted folder's index was still given")
    assert indexes.cached(folder.id) is None


async def test_a_folder_recreated_under_the_same_id_is_read_again(store: Store) -> None:
    """SQLite gives the id of the folder deleted last to the next one created: the
    index of the old folder must not stand for the new one (imaptest deletes and
    recreates its folder between test groups)."""
    from relay.audit.events import ImapFolderChanged

    def event(operation: str) -> ImapFolderChanged:
        return ImapFolderChanged(person="dupont", box=BOX, operation=operation, folder="T")

    mail = MailStore(store)
    indexes = FolderIndexes(mail)
    await mail.create_folder(BOX, "T", None, event("create"))
    await deliver(store, BOX, [letter(1), letter(2), letter(3)], folder="T")
    old = await indexes.find(BOX, "T")
    assert old is not None and old.messages == 3
    await mail.delete_folder(BOX, "T", event("delete"))
    await mail.create_folder(BOX, "T", None, event("create"))
    await deliver(store, BOX, [letter(4)], folder="T")
    new = await indexes.find(BOX, "T")
    assert new is not None and new.messages == 1
    assert new.status(None) == await mail.status(new.folder.id, None)


async def test_budget_keeps_the_folders_used_last(store: Store) -> None:
    mail = MailStore(store)
    indexes = FolderIndexes(mail, budget=3)
    await deliver(store, BOX, [letter(1), letter(2)])
    await deliver(store, BOX, [letter(3), letter(4)], folder="Sent")
    inbox = await mail.folder(BOX, "INBOX")
    sent = await mail.folder(BOX, "Sent")
    assert inbox is not None and sent is not None
    await indexes.get(inbox.id)
    await indexes.get(sent.id)
    assert indexes.cached(inbox.id) is None  # 4 messages > 3: the older one went
    assert indexes.messages == 2
    assert (await indexes.get(inbox.id)).messages == 2  # read again when asked for


def _folder(high: int) -> FolderInfo:
    return FolderInfo(
        id=1, box=BOX, name="INBOX", uidvalidity=7, uidnext=10, highestmodseq=high, special_use=None
    )


def test_status_counts_and_the_log_bound() -> None:
    index = FolderIndex.load(_folder(5), [(u, 5, "", 10) for u in range(1, 6)], [(2, "dupont")])
    assert index.status("dupont").unseen == 4
    assert index.status(None).unseen == 5
    # A change log past its bound is dropped: "since" below the new base is refused.
    index.apply(_folder(6), [(1, 6, SEEN, 10)], [], [])
    assert index.changes(5, None) is not None
    import relay.store.folderindex as fi

    bound, fi.MAX_LOG = fi.MAX_LOG, 1
    try:
        index.apply(_folder(8), [(2, 7, "", 10), (3, 8, "", 10)], [], [])
    finally:
        fi.MAX_LOG = bound
    assert index.base == 8
    assert index.changes(6, None) is None
    assert index.changes(8, None) is not None


def test_any_deleted_among_uids_follows_the_applied_flags() -> None:
    index = FolderIndex.load(_folder(5), [(u, 5, "", 10) for u in range(1, 6)], [])
    assert not index.any_deleted(None) and not index.any_deleted([1, 2, 3])
    index.apply(_folder(6), [(3, 6, "\\Deleted \\Seen", 10)], [], [])
    assert index.any_deleted(None) and index.any_deleted([2, 3])
    assert not index.any_deleted([1, 2, 99])  # 99: no such message
    index.apply(_folder(7), [(3, 7, "\\Seen", 10)], [], [])
    assert not index.any_deleted(None)
