"""The in-memory indexes of the folders in use (edge of `relay.store.folderindex`).

`FolderIndexes.get(folder_id)` gives a folder's index, current with every commit the
store had announced when it was called: the first call reads the folder once; after
that, each commit that touches the folder (`Store.on_commit`) makes the next call read
only what has a MODSEQ above the index's, one read shared by every caller waiting for
it (all the sessions that have the folder selected, a STATUS, a NOTIFY).

The store's commits are the only writers this process hears of: a write to the
database by another process is seen when a commit of this daemon next touches the
folder. Writes to mail go through the daemon (IMAP, SMTP, the delivery worker, the
gateway's down-sync); the CLI commands that change folders (backup restore, key
rotation) run with the daemon stopped or change no folder.

Indexes are kept for the most recently used folders up to `budget` messages in all;
past it the least recently used go, and are read again when next asked for.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from relay.store.folderindex import FolderIndex
from relay.store.mailstore import FolderMissing, MailStore

# About 230 bytes a message: 300,000 messages is about 70 MB of indexes.
DEFAULT_BUDGET = 300_000
_MAX_NAMES = 10_000  # folder names -> ids kept (cleared, not evicted one by one)


class FolderIndexes:
    """One `FolderIndex` per folder in use; see the module docstring."""

    def __init__(self, mail: MailStore, *, budget: int = DEFAULT_BUDGET) -> None:
        self.mail = mail
        self.budget = budget
        self._indexes: OrderedDict[int, FolderIndex] = OrderedDict()
        self._commits: dict[int, int] = {}  # folder id -> commits announced
        self._current: dict[int, int] = {}  # folder id -> commits the index has
        self._reads: dict[int, asyncio.Future[None]] = {}
        self._ids: dict[tuple[str, str], int] = {}  # (box, folder name) -> folder id
        self.reads = 0  # how many reads were made (full or since a MODSEQ)
        mail.store.on_commit(self._on_commit)

    def _on_commit(self, folder_ids: frozenset[int]) -> None:
        for fid in folder_ids:
            if fid in self._commits:
                self._commits[fid] += 1

    async def find(self, box: str, name: str, *, current: bool = True) -> FolderIndex | None:
        """The index of the folder `name` of `box`, None if there is no such folder.

        The folder id of a name found once is kept; renaming or deleting the folder
        is a commit that touches it, after which its index (read again) no longer
        carries that name, and the name is looked up in the store again. With
        `current` False, an index in memory is given even if commits have touched the
        folder since (a hint of existence for a command that checks again in its own
        transaction: APPEND, COPY)."""
        key = (box.lower(), name)
        fid = self._ids.get(key)
        if fid is not None:
            index = self._indexes.get(fid)
            if index is None or current:
                try:
                    index = await self.get(fid)
                except FolderMissing:
                    index = None
            if index is not None and (index.folder.box, index.folder.name) == key:
                return index
            self._ids.pop(key, None)
        folder = await self.mail.folder(box, name)
        if folder is None:
            return None
        try:
            index = await self.get(folder.id)
        except FolderMissing:
            return None
        if len(self._ids) >= _MAX_NAMES:
            self._ids.clear()  # names of folders long gone from memory
        self._ids[key] = folder.id
        return index

    def cached(self, folder_id: int) -> FolderIndex | None:
        """The index if it is in memory, current or not."""
        return self._indexes.get(folder_id)

    async def get(self, folder_id: int) -> FolderIndex:
        """The folder's index, with every commit announced before this call.
        FolderMissing if the folder is gone."""
        wanted = self._commits.get(folder_id, 0)
        while True:
            index = self._indexes.get(folder_id)
            if index is not None and self._current.get(folder_id, -1) >= wanted:
                self._indexes.move_to_end(folder_id)
                return index
            read = self._reads.get(folder_id)
            if read is None:
                read = asyncio.ensure_future(self._read(folder_id))
                read.add_done_callback(_retrieve)
                self._reads[folder_id] = read
            await asyncio.shield(read)

    async def _read(self, folder_id: int) -> None:
        try:
            # Commits from here on count: the read may or may not see them.
            at = self._commits.setdefault(folder_id, 0)
            index = self._indexes.get(folder_id)
            self.reads += 1
            try:
                got = await self.mail.index_read(
                    folder_id, index.folder.highestmodseq if index is not None else None
                )
            except FolderMissing:
                self.forget(folder_id)
                raise
            if index is not None and (
                got.folder.uidvalidity != index.folder.uidvalidity
                or got.folder.highestmodseq < index.folder.highestmodseq
            ):
                # Another folder under the same id (SQLite gives a deleted folder's id
                # to the next one created): nothing of the old index holds.
                index = None
                got = await self.mail.index_read(folder_id, None)
            if index is None:
                index = FolderIndex.load(got.folder, got.rows, got.seen)
            else:
                index.apply(got.folder, got.rows, got.seen, got.gone)
            self._indexes[folder_id] = index
            self._current[folder_id] = at
            self._evict(keep=folder_id)
        finally:
            self._reads.pop(folder_id, None)

    def forget(self, folder_id: int) -> None:
        self._indexes.pop(folder_id, None)
        self._current.pop(folder_id, None)
        self._commits.pop(folder_id, None)

    def _evict(self, keep: int) -> None:
        total = sum(i.messages for i in self._indexes.values())
        while total > self.budget and len(self._indexes) > 1:
            fid, index = next(iter(self._indexes.items()))
            if fid == keep:
                self._indexes.move_to_end(fid)
                continue
            total -= index.messages
            del self._indexes[fid]
            self._current.pop(fid, None)
            self._commits.pop(fid, None)

    @property
    def messages(self) -> int:
        """Messages held in all the indexes (the `budget` counts these)."""
        return sum(i.messages for i in self._indexes.values())


def _retrieve(future: asyncio.Future[None]) -> None:
    # Every waiter may have gone (cancelled): the outcome is still retrieved.
    if not future.cancelled():
        future.exception()
