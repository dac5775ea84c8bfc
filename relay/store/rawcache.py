"""The decrypted bytes of the messages read last, bounded in octets (pure).

A letter is read again and again: each co-holder of a shared box fetches its headers,
then its body, and a client asks for the header fields it lists before the body it
shows. A blob never changes (a key rotation re-encrypts the same octets), so what was
decrypted once can be handed out again without a read and an AES-GCM opening. Only
small messages are kept, least recently used first out, within a fixed budget; the
metadata cache beside it (`MailStore._meta`) keeps the same kind of data longer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class RawCache:
    """Blob id -> decrypted octets, at most `budget` octets in all, none over `largest`."""

    def __init__(self, budget: int, largest: int) -> None:
        self.budget = budget
        self.largest = largest
        self.held = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, blob_id: str, raw: bytes) -> None:
        if len(raw) > self.largest or blob_id in self._items:
            return
        self._items[blob_id] = raw
        self.held += len(raw)
        while self.held > self.budget:
            _, old = self._items.popitem(last=False)
            self.held -= len(old)

    def get(self, blob_id: str) -> bytes | None:
        raw = self._items.get(blob_id)
        if raw is not None:
            self._items.move_to_end(blob_id)
        return raw

    def forget(self, blob_ids: Iterable[str]) -> None:
        """Blobs deleted from the store: their octets are not kept any longer."""
        for i in blob_ids:
            raw = self._items.pop(i, None)
            if raw is not None:
                self.held -= len(raw)
