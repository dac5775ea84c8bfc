"""relay.bounded.Bounded: never more than its limit, the oldest entry out first."""

from __future__ import annotations

import pytest

from relay.bounded import Bounded


def test_the_oldest_goes_first_and_the_limit_holds() -> None:
    cache: Bounded[str, int] = Bounded(3)
    for n, key in enumerate("abcd"):
        cache.put(key, n)
    assert len(cache) == 3
    assert "a" not in cache and cache.get("a") is None
    assert [cache.get(k) for k in "bcd"] == [1, 2, 3]


def test_putting_a_held_key_again_drops_nothing() -> None:
    cache: Bounded[str, int] = Bounded(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 10)
    assert (cache.get("a"), cache.get("b"), len(cache)) == (10, 2, 2)


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Bounded(0)
