"""The decrypted-message cache: bounded in octets, least recently used out first."""

from __future__ import annotations

from relay.store.rawcache import RawCache


def test_keeps_within_budget_and_drops_least_recently_used() -> None:
    cache = RawCache(budget=100, largest=60)
    cache.put("a", b"x" * 40)
    cache.put("b", b"y" * 40)
    assert cache.get("a") == b"x" * 40  # a is now the most recent
    cache.put("c", b"z" * 40)  # 120 > 100: b goes, not a
    assert cache.held == 80
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (b"x" * 40, b"z" * 40)


def test_too_large_is_not_kept() -> None:
    cache = RawCache(budget=100, largest=60)
    cache.put("big", b"x" * 61)
    cache.put("small", b"s")
    assert len(cache) == 1
    assert cache.get("big") is None and cache.get("small") == b"s"


def test_forget() -> None:
    cache = RawCache(budget=100, largest=60)
    cache.put("a", b"12345")
    cache.put("a", b"12345")  # twice: counted once
    assert cache.held == 5
    cache.forget(["a", "never"])
    assert cache.held == 0 and cache.get("a") is None
