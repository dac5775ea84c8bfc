"""The local date of an instant, worked out once per local day.

A co-holder's rights run from and until local days (relay.config.model), so every IMAP
command's rights ask for today's date. `astimezone()` per call was about 2 % of the
event loop under imaptest stress; here the date is found again only when an instant
falls outside the span, local midnight to local midnight, of the last one. `mktime`
places each midnight in the local zone with its own UTC offset, so a day that is 23 or
25 hours long (DST) has its true span.
"""

from __future__ import annotations

import datetime as dt
import time


class LocalDay:
    """`of(instant)` is `instant.astimezone().date()`, kept for the day it spans."""

    __slots__ = ("_day", "_end", "_start")

    def __init__(self) -> None:
        self._start = self._end = 0.0
        self._day = dt.date.min

    def of(self, instant: dt.datetime) -> dt.date:
        seconds = instant.timestamp()
        if self._start <= seconds < self._end:
            return self._day
        day = instant.astimezone().date()
        after = day + dt.timedelta(days=1)
        self._start = time.mktime((day.year, day.month, day.day, 0, 0, 0, 0, 0, -1))
        self._end = time.mktime((after.year, after.month, after.day, 0, 0, 0, 0, 0, -1))
        self._day = day
        return day


__all__ = ["LocalDay"]
