"""Gateway mode: each local change to a box mirrored from an operator writes its journal
row in the same transaction (relay.store.mailstore), and only for such boxes."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from relay.audit.events import ImapFlagsChanged
from relay.errors import StoreError
from relay.message.analysis import analyse
from relay.store.mailstore import FolderMissing, MailStore
from relay.store.mirror import MirrorStore
from relay.store.store import Store
from tests.imap.support import deliver, letter

BOX = "secretariat@cpts-demo.mssante.fr"  # mirrored in these tests
PER = "martin@cpts-demo.mssante.fr"  # hosted here


def _flags_event(person: str = "dupont") -> ImapFlagsChanged:
    return ImapFlagsChanged(
        person=person, box=BOX, folder="INBOX", uids=(1,), mode="+FLAGS", flags=("\\Flagged",)
    )


async def _setup(store: Store) -> tuple[MailStore, MirrorStore, int, int]:
    mirror = MirrorStore(store)
    await mirror.ensure_boxes([BOX])
    mail = MailStore(store)
    await deliver(store, BOX, [letter(1), letter(2), letter(3)])
    await deliver(store, PER, [letter(4)])
    inbox = await mail.folder(BOX, "INBOX")
    per = await mail.folder(PER, "INBOX")
    assert inbox is not None and per is not None
    return mail, mirror, inbox.id, per.id


async def test_deliveries_are_not_journaled(store: Store) -> None:
    _, mirror, _, _ = await _setup(store)
    assert await mirror.journal(BOX) == []


async def test_flags_journaled_as_added_and_removed(store: Store) -> None:
    mail, mirror, inbox, per = await _setup(store)
    await mail.store_flags(
        inbox, [1, 2], "+FLAGS", frozenset({"\\Flagged"}), person=None, event=_flags_event()
    )
    await mail.store_flags(inbox, [1, 3], "FLAGS", frozenset({"\\Answered"}), person=None)
    # No change, no row; a box hosted here, no row.
    await mail.store_flags(inbox, [2], "+FLAGS", frozenset({"\\Flagged"}), person=None)
    await mail.store_flags(per, [1], "+FLAGS", frozenset({"\\Flagged"}), person=None)
    rows = await mirror.journal(BOX)
    assert [(r.kind, r.folder, r.person, r.state) for r in rows] == [
        ("flags", "INBOX", "dupont", "pending"),
        ("flags", "INBOX", None, "pending"),
    ]
    assert rows[0].data == {"changes": [{"uids": [1, 2], "add": ["\\Flagged"], "remove": []}]}
    # FLAGS (replace) is recorded as what it added and removed, message by message.
    assert rows[1].data == {
        "changes": [
            {"uids": [3], "add": ["\\Answered"], "remove": []},
            {"uids": [1], "add": ["\\Answered"], "remove": ["\\Flagged"]},
        ]
    }
    assert rows[0].id < rows[1].id


async def test_per_person_seen_stays_local(store: Store) -> None:
    mail, mirror, inbox, _ = await _setup(store)
    await mail.store_flags(inbox, [1], "+FLAGS", frozenset({"\\Seen"}), person="dupont")
    assert await mirror.journal(BOX) == []
    await mail.store_flags(inbox, [1], "+FLAGS", frozenset({"\\Seen", "\\Flagged"}), person="leroy")
    (row,) = await mirror.journal(BOX)
    assert row.data == {"changes": [{"uids": [1], "add": ["\\Flagged"], "remove": []}]}


async def test_expunge_append_copy_move(store: Store) -> None:
    mail, mirror, inbox, per = await _setup(store)
    sent = await mail.folder(BOX, "Sent")
    per_sent = await mail.folder(PER, "Sent")
    assert sent is not None and per_sent is not None
    await mail.store_flags(inbox, [3], "+FLAGS", frozenset({"\\Deleted"}), person=None)
    await mail.expunge(inbox, None, lambda uids, mids: None)
    raw = letter(9)
    _, uid = await mail.append(
        BOX,
        "Sent",
        raw,
        analyse(raw),
        frozenset({"\\Seen"}),
        dt.datetime.now(dt.UTC),
        person=None,
        make_event=lambda uid: None,
    )
    await mail.copy(
        inbox,
        [1],
        sent.id,
        source_person=None,
        dest_person=None,
        move=False,
        make_event=lambda s, m: None,
    )
    await mail.copy(
        inbox,
        [2],
        sent.id,
        source_person=None,
        dest_person=None,
        move=True,
        make_event=lambda s, m: None,
    )
    # Out of the mirrored box: the operator sees an expunge. Into it: an APPEND.
    await mail.copy(
        sent.id,
        [uid],
        per_sent.id,
        source_person=None,
        dest_person=None,
        move=True,
        make_event=lambda s, m: None,
    )
    await mail.copy(
        per,
        [1],
        inbox,
        source_person=None,
        dest_person=None,
        move=False,
        make_event=lambda s, m: None,
    )
    rows = await mirror.journal(BOX)
    got = [(r.kind, r.folder, r.data) for r in rows]
    assert got[0][0] == "flags"
    assert got[1:] == [
        ("expunge", "INBOX", {"uids": [3]}),
        ("append", "Sent", {"uids": [uid]}),
        (
            "copy",
            "INBOX",
            {"uids": [1], "dest_folder_id": sent.id, "dest_folder": "Sent", "dest_uids": [uid + 1]},
        ),
        (
            "move",
            "INBOX",
            {"uids": [2], "dest_folder_id": sent.id, "dest_folder": "Sent", "dest_uids": [uid + 2]},
        ),
        ("expunge", "Sent", {"uids": [uid]}),
        ("append", "INBOX", {"uids": [4]}),
    ]


async def test_folder_create_rename_delete(store: Store) -> None:
    mail, mirror, _, _ = await _setup(store)
    await mail.create_folder(BOX, "Archives", None, _flags_event("martin"))
    await mail.rename_folder(BOX, "Archives", "Archives 2025", _flags_event("martin"))
    await mail.delete_folder(BOX, "Archives 2025", _flags_event("martin"))
    await mail.create_folder(PER, "Perso", None, _flags_event("martin"))
    rows = await mirror.journal(BOX)
    assert [(r.kind, r.folder, r.data, r.person) for r in rows] == [
        ("create", "Archives", {"special_use": None}, "martin"),
        ("rename", "Archives", {"new": "Archives 2025"}, "martin"),
        ("delete", "Archives 2025", {"remote": None}, "martin"),
    ]
    assert len({r.folder_id for r in rows}) == 1


class _Unrecordable(ImapFlagsChanged):
    """An audit event that cannot be written: the commit of its change fails."""

    def to_record(self) -> dict[str, Any]:
        raise RuntimeError("audit row cannot be made")


async def test_journal_row_commits_with_its_change_or_not_at_all(store: Store) -> None:
    mail, mirror, inbox, _ = await _setup(store)
    with pytest.raises(FolderMissing):
        await mail.rename_folder(BOX, "Nowhere", "Elsewhere", _flags_event())
    broken = _Unrecordable(
        person="dupont", box=BOX, folder="INBOX", uids=(1,), mode="+FLAGS", flags=("\\Flagged",)
    )
    with pytest.raises(StoreError):
        await mail.store_flags(
            inbox, [1], "+FLAGS", frozenset({"\\Flagged"}), person=None, event=broken
        )
    assert await mirror.journal(BOX) == []
    _, flagged = await mail.snapshot(BOX, "INBOX", None)
    assert all("\\Flagged" not in f.flags for f in flagged)  # the change did not happen


async def test_disabled_mirror_journals_nothing(store: Store) -> None:
    mail, mirror, inbox, _ = await _setup(store)
    await mirror.ensure_boxes([])
    await mail.store_flags(inbox, [1], "+FLAGS", frozenset({"\\Flagged"}), person=None)
    assert await mirror.journal(BOX) == []
    (row,) = await mirror.boxes()
    assert (row.box, row.enabled) == (BOX, False)
