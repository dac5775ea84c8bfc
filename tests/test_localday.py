"""LocalDay (relay.localday) gives the date `astimezone()` gives, across midnights and
the days of a DST change, whichever way the clock moves."""

from __future__ import annotations

import datetime as dt
import os
import random
import time
from collections.abc import Iterator

import pytest

from relay.localday import LocalDay


@pytest.fixture(params=["Europe/Paris", "America/St_Johns", "Australia/Lord_Howe", "UTC"])
def zone(request: pytest.FixtureRequest) -> Iterator[str]:
    before = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    yield request.param
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def _instants(first: dt.datetime, days: int, step_minutes: int) -> list[dt.datetime]:
    steps = days * 24 * 60 // step_minutes
    return [first + dt.timedelta(minutes=step_minutes * k) for k in range(steps)]


@pytest.mark.parametrize(
    "first",
    [
        dt.datetime(2026, 3, 27, tzinfo=dt.UTC),  # Europe: 29 March is 23 hours long
        dt.datetime(2026, 10, 23, tzinfo=dt.UTC),  # Europe: 25 October is 25 hours
        dt.datetime(2026, 4, 3, tzinfo=dt.UTC),  # Lord Howe: a half-hour change
        dt.datetime(2026, 12, 30, tzinfo=dt.UTC),  # a year's end
    ],
)
def test_the_date_is_astimezones_in_order_and_out_of_order(zone: str, first: dt.datetime) -> None:
    instants = _instants(first, days=5, step_minutes=7)
    local = LocalDay()
    for t in instants:
        assert local.of(t) == t.astimezone().date(), (zone, t)
    random.Random(4).shuffle(instants)
    for t in instants:
        assert local.of(t) == t.astimezone().date(), (zone, t)


def test_either_side_of_local_midnight(zone: str) -> None:
    local = LocalDay()
    midnight = dt.datetime(2026, 12, 2).astimezone()  # local midnight, aware
    before, after = midnight - dt.timedelta(microseconds=1), midnight
    assert local.of(before) == dt.date(2026, 12, 1)
    assert local.of(after) == dt.date(2026, 12, 2)
    assert local.of(before) == dt.date(2026, 12, 1)
