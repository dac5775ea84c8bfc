"""Authentication throttling that a guesser cannot turn against the person (pure).

Before (issue 9, item 6), five wrong passwords from anywhere locked a login out
everywhere: a fuzzer on one address locked every person out of every client. Now the
counts are kept per (address, login), per address and per login, each over a window
of `lockout_seconds`, and each does one thing:

    (address, login)  N failures → that login is refused *from that address* for a while
    address           M failures, any logins → the address is refused for a while (spraying)
    login             failures from anywhere → each failed answer is slowed down, and
                      addresses that have failed try this login one at a time

A refusal only ever follows failures *from the address asking*: the right password
from an address that has not failed is never refused (at worst it waits behind nobody:
the one-at-a-time queue is for addresses that have failed). A success clears the
(address, login) count only: an attacker holding one valid account cannot wash its
address clean between guesses.

No clock and no I/O here: callers pass the time (monotonic seconds).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K", str, tuple[str, str])

# Slow-down after the n-th failure of a count: min(BASE * 2**(n-1), CAP) seconds.
DELAY_BASE_SECONDS = 0.1
DELAY_CAP_SECONDS = 2.0
# The tables are bounded: past this many entries, expired ones are dropped, then the
# oldest (a spray over millions of logins must not grow memory without end).
MAX_ENTRIES = 50_000


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    pair_failures_before_lockout: int  # Limits.auth_failures_before_lockout
    address_failures_before_lockout: int  # Limits.auth_address_failures_before_lockout
    lockout_seconds: float  # Limits.auth_lockout_seconds: the window and the lock


class Verdict(enum.Enum):
    ALLOW = "allow"
    LOCKED_PAIR = "this login from this address"
    LOCKED_ADDRESS = "this address"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    retry_after_seconds: float = 0.0
    # Try the password only when no other attempt on this login is running (the login
    # is being guessed at and this address has failed before).
    one_at_a_time: bool = False


@dataclass(slots=True)
class _Count:
    count: int = 0
    last: float = 0.0
    locked_until: float = 0.0


class Throttle:
    """The three counts and the decisions they give."""

    def __init__(self, policy: ThrottlePolicy) -> None:
        self.policy = policy
        self._pairs: dict[tuple[str, str], _Count] = {}
        self._addresses: dict[str, _Count] = {}
        self._logins: dict[str, _Count] = {}

    def before(self, now: float, address: str, login: str | None) -> Decision:
        """May this address try (this login) now?"""
        if login is not None:
            pair = self._live(self._pairs, (address, login), now)
            if pair is not None and pair.locked_until > now:
                return Decision(Verdict.LOCKED_PAIR, pair.locked_until - now)
        addr = self._live(self._addresses, address, now)
        if addr is not None and addr.locked_until > now:
            return Decision(Verdict.LOCKED_ADDRESS, addr.locked_until - now)
        guessed = login is not None and self._count(self._logins, login, now) >= (
            self.policy.pair_failures_before_lockout
        )
        return Decision(Verdict.ALLOW, one_at_a_time=guessed and addr is not None)

    def failed(self, now: float, address: str, login: str | None) -> float:
        """Count a failure; return how long to wait before answering it."""
        p = self.policy
        counts = [(self._bump(self._addresses, address, now), p.address_failures_before_lockout)]
        if login is not None:
            pair = self._bump(self._pairs, (address, login), now)
            counts.append((pair, p.pair_failures_before_lockout))
            counts.append((self._bump(self._logins, login, now), 0))  # 0: never locks
        delay = 0.0
        for entry, lock_at in counts:
            if lock_at and entry.count >= lock_at:
                entry.locked_until = now + p.lockout_seconds
            delay = max(delay, min(DELAY_BASE_SECONDS * 2 ** (entry.count - 1), DELAY_CAP_SECONDS))
        return delay

    def succeeded(self, now: float, address: str, login: str) -> None:
        self._pairs.pop((address, login), None)

    def sizes(self) -> tuple[int, int, int]:
        return len(self._pairs), len(self._addresses), len(self._logins)

    # --- the counts -----------------------------------------------------------------

    def _expired(self, entry: _Count, now: float) -> bool:
        return now - entry.last > self.policy.lockout_seconds and entry.locked_until <= now

    def _live(self, table: dict[K, _Count], key: K, now: float) -> _Count | None:
        entry = table.get(key)
        if entry is not None and self._expired(entry, now):
            del table[key]
            return None
        return entry

    def _count(self, table: dict[K, _Count], key: K, now: float) -> int:
        entry = self._live(table, key, now)
        return 0 if entry is None else entry.count

    def _bump(self, table: dict[K, _Count], key: K, now: float) -> _Count:
        entry = self._live(table, key, now)
        if entry is None:
            if len(table) >= MAX_ENTRIES:
                self._shrink(table, now)
            entry = table[key] = _Count()
        entry.count += 1
        entry.last = now
        return entry

    def _shrink(self, table: dict[K, _Count], now: float) -> None:
        for key in [k for k, e in table.items() if self._expired(e, now)]:
            del table[key]
        if len(table) >= MAX_ENTRIES:
            oldest = sorted(table, key=lambda k: table[k].last)[: len(table) // 10 or 1]
            for key in oldest:
                del table[key]
