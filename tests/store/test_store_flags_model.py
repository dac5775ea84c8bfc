"""STORE against a model of its rules, on both engines (their statements differ:
PostgreSQL bumps the folder and writes the flags in one, mailstore._Statements): what
RFC 3501 §6.4.6, RFC 4314 §4 (`keep`), RFC 7162 §3.1.3 (UNCHANGEDSINCE) and the
per-person \\Seen of a shared box say.

Every step is a seeded random STORE (mode, flags, UIDs with some that do not exist, a
person or the operator, sometimes UNCHANGEDSINCE, sometimes flags to keep), checked
against the model: which messages changed, to what, at which MODSEQ, which were left
alone as modified; then every message's flags as each person sees them, and the
stored text (distinct flags in code point order, as `format_flags` writes them)."""

from __future__ import annotations

import random
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import schema as t
from relay.store.mailstore import MailStore
from relay.store.store import Store
from tests.store.test_mailstore_units import BOX, SEEN, _append

PEOPLE = (None, "dupont", "leroy")
# ASCII atoms whose byte order differs from a locale's: '$' < 'J' < '\\' < 'a'
POOL = ("\\Seen", "\\Flagged", "\\Deleted", "\\Answered", "$Label1", "$label1", "Junk", "a")


class Model:
    """The box's flags: the stored set of each message (the operator's view, \\Seen
    included), the people who have seen it, and its MODSEQ."""

    def __init__(self, uids: list[int], modseq: int) -> None:
        self.stored: dict[int, frozenset[str]] = dict.fromkeys(uids, frozenset())
        self.seen: set[tuple[int, str]] = set()
        self.modseq = dict.fromkeys(uids, modseq)

    def view(self, uid: int, person: str | None) -> frozenset[str]:
        flags = self.stored[uid]
        if person is None:
            return flags
        return flags - {SEEN} | ({SEEN} if (uid, person) in self.seen else frozenset())

    def store(
        self,
        uids: set[int],
        mode: str,
        flags: frozenset[str],
        person: str | None,
        since: int | None,
        keep: frozenset[str],
        new_modseq: int,
    ) -> tuple[dict[int, frozenset[str]], list[int]]:
        changed: dict[int, frozenset[str]] = {}
        modified = []
        for uid in sorted(uids & self.stored.keys()):
            if since is not None and self.modseq[uid] > since:
                modified.append(uid)
                continue
            have = self.view(uid, person)
            # RFC 3501 §6.4.6, stated here rather than taken from the code under test
            want = {"FLAGS": flags, "+FLAGS": have | flags, "-FLAGS": have - flags}[mode]
            if keep and mode == "FLAGS":
                want = (want - keep) | (have & keep)
            if want == have:
                continue
            changed[uid] = want
            self.modseq[uid] = new_modseq
            if person is None:
                self.stored[uid] = want
            else:
                self.stored[uid] = want - {SEEN}
                if SEEN in want:
                    self.seen.add((uid, person))
                else:
                    self.seen.discard((uid, person))
        return changed, modified


async def _stored_text(store: Store, folder_id: int) -> dict[int, str]:
    async def read(conn: AsyncConnection) -> Any:
        stmt = select(t.messages.c.uid, t.messages.c.flags).where(
            t.messages.c.folder_id == folder_id
        )
        return (await conn.execute(stmt)).all()

    return {int(r.uid): r.flags for r in await store.read(read)}


async def test_store_follows_the_model(store: Store) -> None:
    mail = MailStore(store)
    uids = await _append(mail, 12)
    inbox = await mail.folder(BOX, "INBOX")
    assert inbox is not None
    model = Model(uids, inbox.highestmodseq)
    highest = inbox.highestmodseq
    rng = random.Random(14)
    for step in range(80):
        mode = rng.choice(("FLAGS", "+FLAGS", "-FLAGS"))
        flags = frozenset(rng.sample(POOL, rng.randint(0, 3)))
        person = rng.choice(PEOPLE)
        asked = set(rng.sample(uids, rng.randint(1, 6)))
        if rng.random() < 0.2:
            asked.add(uids[-1] + rng.randint(1, 50))  # no such message: left alone
        since = rng.randint(highest - 5, highest) if rng.random() < 0.3 else None
        keep = frozenset(rng.sample(POOL, 2)) if rng.random() < 0.3 else frozenset()
        want, modified = model.store(asked, mode, flags, person, since, keep, highest + 1)
        got = await mail.store_flags(
            inbox.id,
            sorted(asked),
            mode,
            flags,
            person=person,
            unchanged_since=since,
            keep=keep,
        )
        where = f"step {step}: {mode} {sorted(flags)} by {person} on {sorted(asked)}"
        assert {c.uid: c.flags for c in got.changed} == want, where
        assert [c.uid for c in got.changed] == sorted(want), where
        assert list(got.modified) == modified, where
        if want:
            highest += 1
        assert {c.modseq for c in got.changed} <= {highest}, where
        for person_view in PEOPLE:
            _, rows = await mail.snapshot(BOX, "INBOX", person_view)
            seen_by = {r.uid: r.flags for r in rows}
            expected = {u: model.view(u, person_view) for u in uids}
            assert seen_by == expected, f"{where}, as {person_view} sees it"
            assert {r.uid: r.modseq for r in rows} == model.modseq, where
        stored = await _stored_text(store, inbox.id)
        # the stored text: distinct flags, one space apart, in code point order
        assert stored == {u: " ".join(sorted(f)) for u, f in model.stored.items()}, where
    folder = await mail.folder(BOX, "INBOX")
    assert folder is not None and folder.highestmodseq == highest
