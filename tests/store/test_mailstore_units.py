"""The writer units of IMAP (STORE, EXPUNGE, APPEND) on the edges of their statements
(relay.store.mailstore._Statements): a UID list as one parameter and the UID range
above _IN_LIMIT, sparse UIDs, per-person \\Seen rows, a folder deleted under them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from relay.audit.events import ImapFlagsChanged
from relay.message.analysis import analyse
from relay.store.mailstore import _IN_LIMIT, Appended, FolderMissing, MailStore
from relay.store.store import Store
from tests.imap.support import letter

BOX = "secretariat@cpts-demo.mssante.fr"
SEEN = "\\Seen"
FLAGGED = "\\Flagged"
DELETED = "\\Deleted"
WHEN = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))


def _no_event(*_: Any) -> None:
    return None


async def _append(
    mail: MailStore,
    count: int,
    flags: frozenset[str] = frozenset(),
    person: str | None = None,
    folder: str = "INBOX",
) -> list[int]:
    messages = [Appended(letter(n), analyse(letter(n)), flags, WHEN) for n in range(count)]
    _, uids = await mail.append_many(
        BOX, folder, messages, person=person, make_event=lambda got: [None] * len(got)
    )
    return uids


async def _flags(mail: MailStore, person: str | None) -> dict[int, frozenset[str]]:
    _, rows = await mail.snapshot(BOX, "INBOX", person)
    return {r.uid: r.flags for r in rows}


async def test_store_on_sparse_uids_in_list_and_range(store: Store) -> None:
    mail = MailStore(store)
    uids = await _append(mail, 2 * _IN_LIMIT + 40)
    inbox = await mail.folder(BOX, "INBOX")
    assert inbox is not None
    # A list: every third UID, and UIDs that do not exist (none changes, none fails).
    few = [*uids[::3][:40], uids[-1] + 5, uids[-1] + 900]
    got = await mail.store_flags(inbox.id, few, "+FLAGS", frozenset({FLAGGED}), person=None)
    assert [c.uid for c in got.changed] == sorted(uids[::3][:40])
    # Above _IN_LIMIT: the UID range is read and only the UIDs asked are changed.
    many = uids[1::2]
    assert len(many) > _IN_LIMIT
    got = await mail.store_flags(inbox.id, many, "+FLAGS", frozenset({DELETED}), person=None)
    assert [c.uid for c in got.changed] == many
    assert len({c.modseq for c in got.changed}) == 1
    flags = await _flags(mail, None)
    assert {u for u, f in flags.items() if FLAGGED in f} == set(uids[::3][:40])
    assert {u for u, f in flags.items() if DELETED in f} == set(many)
    # UID EXPUNGE of a sparse list among them: only those flagged \Deleted go.
    asked = many[:7] + uids[0:6:2]  # uids[0], [2], [4] are not \Deleted
    gone = await mail.expunge(inbox.id, asked, _no_event)
    assert [u for u, _ in gone] == sorted(many[:7])
    assert await mail.vanished(inbox.id, 0) == sorted(many[:7])
    # EXPUNGE of all the rest, more than _IN_LIMIT rows at once.
    gone = await mail.expunge(inbox.id, None, _no_event)
    assert [u for u, _ in gone] == many[7:]
    assert sorted(await _flags(mail, None)) == uids[0::2]


async def test_per_person_seen_rows(store: Store) -> None:
    mail = MailStore(store)
    uids = await _append(mail, 12)
    # APPEND with \Seen for a person: a `seen` row of theirs, no \Seen in `flags`.
    (new,) = await _append(mail, 1, frozenset({SEEN, FLAGGED}), person="dupont")
    inbox = await mail.folder(BOX, "INBOX")
    assert inbox is not None
    event = ImapFlagsChanged(
        person="dupont", box=BOX, folder="INBOX", uids=(1,), mode="+FLAGS", flags=(SEEN,)
    )
    got = await mail.store_flags(
        inbox.id, uids[:8], "+FLAGS", frozenset({SEEN}), person="dupont", event=event
    )
    assert [c.uid for c in got.changed] == uids[:8]
    got = await mail.store_flags(
        inbox.id, [*uids[2:6], new], "-FLAGS", frozenset({SEEN}), person="dupont"
    )
    assert [c.uid for c in got.changed] == [*uids[2:6], new]
    dupont, leroy, shared = (
        await _flags(mail, "dupont"),
        await _flags(mail, "leroy"),
        await _flags(mail, None),
    )
    assert {u for u, f in dupont.items() if SEEN in f} == set(uids[:2] + uids[6:8])
    assert dupont[new] == frozenset({FLAGGED})
    assert all(SEEN not in f for f in leroy.values())
    assert all(SEEN not in f for f in shared.values())
    # Another person's seen rows are not the ones removed.
    await mail.store_flags(inbox.id, uids[:1], "+FLAGS", frozenset({SEEN}), person="leroy")
    await mail.store_flags(inbox.id, uids[:1], "-FLAGS", frozenset({SEEN}), person="dupont")
    assert SEEN in (await _flags(mail, "leroy"))[uids[0]]
    assert SEEN not in (await _flags(mail, "dupont"))[uids[0]]


async def test_units_on_a_deleted_folder(store: Store) -> None:
    mail = MailStore(store)
    event = ImapFlagsChanged(
        person="dupont", box=BOX, folder="Archives", uids=(), mode="+FLAGS", flags=()
    )
    await mail.create_folder(BOX, "Archives", None, event)
    archives = await mail.folder(BOX, "Archives")
    assert archives is not None
    uids = await _append(mail, 3, frozenset({DELETED}), folder="Archives")
    await mail.delete_folder(BOX, "Archives", event)
    # Gone under a session: STORE and EXPUNGE find nothing to change, APPEND refuses.
    got = await mail.store_flags(archives.id, uids, "+FLAGS", frozenset({FLAGGED}), person=None)
    assert got.changed == () and got.modified == ()
    assert await mail.expunge(archives.id, None, _no_event) == []
    with pytest.raises(FolderMissing):
        await _append(mail, 1, folder="Archives")
