"""One folder's messages held in memory as the store last committed them, pure.

A `FolderIndex` is what SELECT, STATUS and a session's "what changed since MODSEQ n"
need of a folder: each message's UID, MODSEQ, flags and size, the per-person \\Seen
sets, and the folder's head (UIDNEXT, HIGHESTMODSEQ, the \\Recent watermark). It is
built from one read of the folder (`FolderIndex.load`) and brought forward with the
rows the store gives for "MODSEQ above the index's" (`FolderIndex.apply`): since every
change to a folder takes the next MODSEQ and stamps it on the messages it changed and
the UIDs it removed (relay.store.mailstore), that read is exact and idempotent.

It answers from memory:
- `snapshot(person)`: the messages as a person sees their flags, in UID order, and
  the UIDs of each distinct flag set, for SELECT: copies of what is kept per view,
  not rebuilt lists.
- `status(person)`: STATUS counts, kept as counters while rows are applied.
- `changes(since, person)`: the changes above a MODSEQ, for the sessions that have the
  folder selected; None when `since` is older than what the index has kept (the caller
  asks the store).

Costs: about 230 bytes per message (23 MB for 100,000, measured with tracemalloc),
plus one dict per person view that has been asked for; each session's SELECT copy
about 100 bytes per message more. Nothing here does I/O; `relay.store.indexcache` loads
and keeps the indexes of the folders in use.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable

from relay.store.mailstore import (
    DELETED,
    SEEN,
    Changes,
    Flagged,
    FolderInfo,
    FolderStatus,
    IndexRow,
)

# Changes kept for "since n" answers. Past this, the index forgets them (`base` moves
# up) and a session further behind asks the store, as it did before there was one.
MAX_LOG = 20_000

_NO_SEEN: frozenset[str] = frozenset()
_ONLY_SEEN: frozenset[str] = frozenset({SEEN})


class FolderIndex:
    """The folder's messages and head; see the module docstring."""

    def __init__(self, folder: FolderInfo) -> None:
        self.folder = folder
        self.uids: list[int] = []  # ascending
        self.shared: dict[int, Flagged] = {}  # the stored flags (shared \Seen view)
        self.size: dict[int, int] = {}
        self.seen: dict[str, set[int]] = {}  # per-person \Seen: person -> UIDs
        self._views: dict[str, dict[int, Flagged]] = {}  # per-person views asked for
        # Per view (None: shared), the UIDs of each distinct flag set: what a search on
        # flags alone reads (`relay.imap.handlers.search`), copied at SELECT.
        self._buckets: dict[str | None, dict[frozenset[str], set[int]]] = {}
        # Every MODSEQ above `base` is known: the changes (modseq, uid) in MODSEQ
        # order (a UID changed twice appears twice) and the removals.
        self.base = folder.highestmodseq
        self._log: list[tuple[int, int]] = []
        self._gone: list[tuple[int, int]] = []  # (modseq, uid) ascending
        self.total_size = 0
        self.deleted = 0  # messages with \Deleted
        self.shared_seen = 0  # messages with \Seen in the stored flags
        self.keywords: set[str] = set()  # every flag any message has had
        self._flagsets: dict[frozenset[str], frozenset[str]] = {}  # one object per set
        self._texts: dict[str, frozenset[str]] = {}  # stored text -> its set

    # --- building ---------------------------------------------------------------------

    @classmethod
    def load(
        cls, folder: FolderInfo, rows: Iterable[IndexRow], seen: Iterable[tuple[int, str]]
    ) -> FolderIndex:
        """The index of a folder read in one transaction: its head, every message (in
        any order) and every (uid, person) row of per-person \\Seen."""
        index = cls(folder)
        ordered = sorted(rows)
        shared, texts, parse = index.shared, index._texts, index._parse
        make = tuple.__new__  # Flagged(...) without its Python-level __new__: 100,000 times
        for uid, modseq, text, _ in ordered:
            flags = texts.get(text)
            if flags is None:
                flags = parse(text)
            shared[uid] = make(Flagged, (uid, modseq, flags))
        index.size = {row[0]: row[3] for row in ordered}
        index.uids = [row[0] for row in ordered]
        index.total_size = sum(index.size.values())
        buckets: dict[frozenset[str], set[int]] = {}
        for uid, f in shared.items():
            buckets.setdefault(f.flags, set()).add(uid)
        index._buckets[None] = buckets
        for flags, uids in buckets.items():
            if DELETED in flags:
                index.deleted += len(uids)
            if SEEN in flags:
                index.shared_seen += len(uids)
        for uid, person in seen:
            if uid in shared:
                index.seen.setdefault(person, set()).add(uid)
        return index

    def _parse(self, text: str) -> frozenset[str]:
        """The flags stored as `text`, one object per distinct set."""
        found = self._texts.get(text)
        if found is None:
            found = self._texts[text] = self._intern(frozenset(text.split()))
        return found

    def _intern(self, flags: frozenset[str]) -> frozenset[str]:
        found = self._flagsets.get(flags)
        if found is None:
            found = self._flagsets[flags] = flags
            self.keywords.update(flags)
        return found

    def _put(self, row: IndexRow) -> None:
        """Add or replace a message's state (the UID list is the caller's)."""
        uid, modseq, text, size = row
        old = self.shared.get(uid)
        if old is not None:
            self._count(old.flags, self.size[uid], -1)
        flags = self._parse(text)
        self.shared[uid] = Flagged(uid, modseq, flags)
        self._file(None, uid, old.flags if old is not None else None, flags)
        self.size[uid] = size
        self._count(flags, size, +1)

    def _count(self, flags: frozenset[str], size: int, sign: int) -> None:
        self.total_size += sign * size
        if DELETED in flags:
            self.deleted += sign
        if SEEN in flags:
            self.shared_seen += sign

    def apply(
        self,
        folder: FolderInfo,
        changed: Iterable[IndexRow],
        seen: Iterable[tuple[int, str]],
        gone: Iterable[tuple[int, int]],
    ) -> None:
        """Bring the index forward with what the store has above its HIGHESTMODSEQ:
        the folder's head (read first), the messages changed or added, every per-person
        \\Seen row of those messages, and the (uid, modseq) removed. Rows at or below
        what is already known change nothing, so a read that overlaps is harmless."""
        rows = sorted(changed)
        logged: list[tuple[int, int]] = []
        seen_of: dict[int, set[str]] = {}
        for uid, person in seen:
            seen_of.setdefault(uid, set()).add(person)
        for row in rows:
            uid, modseq = row[0], row[1]
            old = self.shared.get(uid)
            if old is not None and old.modseq >= modseq:
                continue
            if old is None:
                if self.uids and uid < self.uids[-1]:
                    bisect.insort(self.uids, uid)
                else:
                    self.uids.append(uid)
            self._put(row)
            logged.append((modseq, uid))
            persons = seen_of.get(uid, set())
            for person, uids in self.seen.items():
                if person in persons:
                    uids.add(uid)
                else:
                    uids.discard(uid)
            for person in persons - self.seen.keys():
                self.seen[person] = {uid}
            for person, view in self._views.items():
                before = view.get(uid)
                view[uid] = now = self._as_seen_by(self.shared[uid], person)
                self._file(person, uid, before.flags if before is not None else None, now.flags)
        for uid, modseq in gone:
            old = self.shared.pop(uid, None)
            if old is None:
                continue  # removed before, or added and removed since the last read
            self._count(old.flags, self.size.pop(uid), -1)
            del self.uids[bisect.bisect_left(self.uids, uid)]
            for uids in self.seen.values():
                uids.discard(uid)
            self._file(None, uid, old.flags, None)
            for person, view in self._views.items():
                if (before := view.pop(uid, None)) is not None:
                    self._file(person, uid, before.flags, None)
            bisect.insort(self._gone, (modseq, uid))
        # The log stays in MODSEQ order: what a read gives is above what it has.
        logged.sort()
        if logged and self._log and logged[0] < self._log[-1]:
            self._log = sorted(self._log + logged)
        else:
            self._log += logged
        high = max(folder.highestmodseq, self.folder.highestmodseq)
        self.folder = dataclasses.replace(
            folder,
            uidnext=max(folder.uidnext, self.folder.uidnext),
            highestmodseq=high,
            recent_uid=max(folder.recent_uid, self.folder.recent_uid),
        )
        if len(self._log) + len(self._gone) > MAX_LOG:
            self.base = high
            self._log.clear()
            self._gone.clear()

    def _file(
        self, person: str | None, uid: int, old: frozenset[str] | None, new: frozenset[str] | None
    ) -> None:
        """Move `uid` between the flag-set buckets of a view (if it has them)."""
        buckets = self._buckets.get(person)
        if buckets is None or old is new:
            return
        if old is not None:
            bucket = buckets[old]
            bucket.discard(uid)
            if not bucket:
                del buckets[old]
        if new is not None:
            buckets.setdefault(new, set()).add(uid)

    def took_recent(self, upto: int) -> None:
        """The \\Recent watermark moved to `upto` (`MailStore.claim_recent`, which
        writes it without touching the folder's MODSEQ)."""
        if upto > self.folder.recent_uid:
            self.folder = dataclasses.replace(self.folder, recent_uid=upto)

    # --- answers ----------------------------------------------------------------------

    def _as_seen_by(self, f: Flagged, person: str) -> Flagged:
        seen = f.uid in self.seen.get(person, ())
        if (SEEN in f.flags) == seen:
            return f
        flags = f.flags - _ONLY_SEEN | (_ONLY_SEEN if seen else _NO_SEEN)
        return Flagged(f.uid, f.modseq, self._intern(flags))

    def view(self, person: str | None) -> dict[int, Flagged]:
        """Every message as `person` sees its flags (None: the stored \\Seen), by UID.
        The caller must not change it (copy it)."""
        if person is None:
            return self.shared
        found = self._views.get(person)
        if found is None:
            found = self._views[person] = {
                u: self._as_seen_by(f, person) for u, f in self.shared.items()
            }
            buckets: dict[frozenset[str], set[int]] = {}
            for uid, f in found.items():
                buckets.setdefault(f.flags, set()).add(uid)
            self._buckets[person] = buckets
        return found

    def snapshot(
        self, person: str | None
    ) -> tuple[list[int], dict[int, Flagged], dict[frozenset[str], set[int]]]:
        """What SELECT keeps, copied: the UIDs (ascending), `view(person)` and the
        UIDs of each distinct flag set of that view."""
        view = self.view(person)
        buckets = {flags: set(uids) for flags, uids in self._buckets[person].items()}
        return list(self.uids), dict(view), buckets

    def status(self, person: str | None) -> FolderStatus:
        f = self.folder
        seen = self.shared_seen if person is None else len(self.seen.get(person, ()))
        count = len(self.uids)
        return FolderStatus(
            messages=count,
            recent=count - bisect.bisect_left(self.uids, f.recent_uid),
            unseen=count - seen,
            uidnext=f.uidnext,
            uidvalidity=f.uidvalidity,
            highestmodseq=f.highestmodseq,
            size=self.total_size,
            deleted=self.deleted,
        )

    def changes(self, since: int, person: str | None) -> Changes | None:
        """What changed above MODSEQ `since`, as `person` sees it; None if the index
        does not go back that far."""
        if since < self.base:
            return None
        view = self.view(person)
        start = bisect.bisect_right(self._log, (since, 1 << 62))
        uids = sorted({uid for _, uid in self._log[start:]})
        changed = tuple(f for uid in uids if (f := view.get(uid)) is not None and f.modseq > since)
        g = bisect.bisect_right(self._gone, (since, 1 << 62))
        gone = sorted((uid, modseq) for modseq, uid in self._gone[g:])
        return Changes(
            highestmodseq=self.folder.highestmodseq,
            uidnext=self.folder.uidnext,
            changed=changed,
            expunged=tuple(u for u, _ in gone),
            expunged_at=tuple(gone),
            recent_uid=self.folder.recent_uid,
        )

    def any_deleted(self, uids: Iterable[int] | None) -> bool:
        """Whether a message among `uids` (all if None) has \\Deleted."""
        if self.deleted == 0:
            return False
        if uids is None:
            return True
        shared = self.shared
        return any((f := shared.get(uid)) is not None and DELETED in f.flags for uid in uids)

    def first_unseen(self, view: dict[int, Flagged]) -> int:
        """The number of the first message without \\Seen in `view`, 0 if none."""
        for i, uid in enumerate(self.uids):
            if SEEN not in view[uid].flags:
                return i + 1
        return 0

    @property
    def messages(self) -> int:
        return len(self.uids)
