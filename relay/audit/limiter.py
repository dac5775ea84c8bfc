"""A per-window allowance for audit events a client can provoke at will (pure).

A looping client refused again and again must not flood the audit trail (issue 9,
item 10): the first `per_window` events of each window are recorded; the others are
counted, and the count is handed to the next recorded event (`take_suppressed`).
"""

from __future__ import annotations


class WindowLimiter:
    """At most `per_window` events per fixed window of `window_seconds`."""

    def __init__(self, per_window: int, window_seconds: float) -> None:
        self.per_window = per_window
        self.window_seconds = window_seconds
        self._start: float | None = None
        self._used = 0
        self._suppressed = 0

    def allow(self, now: float) -> bool:
        if self._start is None or now - self._start >= self.window_seconds:
            self._start, self._used = now, 0
        if self._used < self.per_window:
            self._used += 1
            return True
        self._suppressed += 1
        return False

    def take_suppressed(self) -> int:
        """How many were refused since the last call (and reset that count)."""
        count, self._suppressed = self._suppressed, 0
        return count
