"""A dictionary that holds at most so many entries, the oldest put in going first.

For values that never go stale while kept (a stored message never changes: its sort
keys, its rendered ENVELOPE, its metadata, its row for one UIDVALIDITY), so that only
memory bounds them. First in, first out rather than least recently used: a dict keeps
insertion order, so dropping the oldest is one `next(iter(...))`, and the hit path is
a plain `dict.get`. (relay.store.rawcache is the one bounded by octets.)
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Bounded(Generic[K, V]):
    """At most `max_entries` entries; putting one more drops the oldest."""

    __slots__ = ("_items", "max_entries")

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("a bounded cache holds at least one entry")
        self.max_entries = max_entries
        self._items: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        items = self._items
        if key not in items and len(items) >= self.max_entries:
            del items[next(iter(items))]
        items[key] = value

    def clear(self) -> None:
        self._items.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


__all__ = ["Bounded"]
