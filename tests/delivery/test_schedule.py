"""Retry schedule: the whole 5-day schedule, boundaries, time zones."""

from __future__ import annotations

import datetime as dt
import itertools
from zoneinfo import ZoneInfo

import pytest

from relay.config.model import Limits
from relay.delivery.schedule import RetryPolicy, expires_at, next_attempt, should_warn_delay

UTC = dt.UTC
PARIS = ZoneInfo("Europe/Paris")
T0 = dt.datetime(2025, 6, 2, 8, 0, tzinfo=UTC)
POLICY = RetryPolicy()
MAX_ATTEMPTS = 10_000  # loop bound for the simulations


def simulate(
    policy: RetryPolicy, first_queued: dt.datetime, attempt_duration: dt.timedelta
) -> list[dt.datetime]:
    """Start instants of every attempt until the schedule says give up.

    The first attempt is immediate; each attempt fails after `attempt_duration`.
    """
    starts = [first_queued]
    for failed in range(1, MAX_ATTEMPTS):
        ended = starts[-1] + attempt_duration
        nxt = next_attempt(policy, attempts=failed, first_queued=first_queued, now=ended)
        if nxt is None:
            return starts
        starts.append(nxt)
    raise AssertionError("schedule never gave up")


@pytest.mark.parametrize(
    ("attempts", "seconds"),
    [(1, 300), (2, 600), (3, 1200), (4, 2400), (5, 3600), (6, 3600), (50, 3600), (10**6, 3600)],
)
def test_interval_table(attempts: int, seconds: int) -> None:
    assert POLICY.interval_seconds(attempts) == seconds
    nxt = next_attempt(POLICY, attempts=attempts, first_queued=T0, now=T0)
    assert nxt == T0 + dt.timedelta(seconds=seconds)


def test_whole_five_day_schedule_with_instant_failures() -> None:
    starts = simulate(POLICY, T0, dt.timedelta(0))
    offsets = [int((s - T0).total_seconds()) for s in starts]
    # 0, then 5, 15, 35, 75 minutes, then hourly until the clamp at exactly 5 days.
    assert offsets[:6] == [0, 300, 900, 2100, 4500, 8100]
    give_up = 5 * 86400
    hourly = list(range(4500, give_up, 3600))
    assert offsets == [0, 300, 900, 2100, *hourly, give_up]
    assert len(starts) == 124  # 1 immediate + 4 ramp-up + 118 hourly + 1 at expiry
    assert starts[-1] == expires_at(POLICY, T0)


@pytest.mark.parametrize("duration_seconds", [0, 1, 30, 299, 1799, 3599])
@pytest.mark.parametrize(
    "policy",
    [
        RetryPolicy(),
        RetryPolicy(first_seconds=60, max_interval_seconds=600, give_up_seconds=86400),
        RetryPolicy(first_seconds=300, max_interval_seconds=300, give_up_seconds=3600),
        RetryPolicy(first_seconds=7, max_interval_seconds=1000, give_up_seconds=12345),
    ],
)
def test_schedule_properties(policy: RetryPolicy, duration_seconds: int) -> None:
    duration = dt.timedelta(seconds=duration_seconds)
    starts = simulate(policy, T0, duration)
    expiry = expires_at(policy, T0)
    assert len(starts) >= 2
    assert all(a < b for a, b in itertools.pairwise(starts)), "monotonic"
    cap = dt.timedelta(seconds=policy.max_interval_seconds)
    for failed, (a, b) in enumerate(itertools.pairwise(starts), start=1):
        wait = b - (a + duration)
        assert wait <= cap, "capped"
        full = dt.timedelta(seconds=policy.interval_seconds(failed))
        assert wait == full or b == expiry, "only the last wait is shortened, to the expiry"
    assert starts[-1] <= expiry
    # Giving up happened only because the last attempt ended at or after expiry.
    assert starts[-1] + duration >= expiry


def test_give_up_boundary() -> None:
    expiry = T0 + dt.timedelta(days=5)
    just_before = expiry - dt.timedelta(seconds=1)
    assert next_attempt(POLICY, attempts=9, first_queued=T0, now=just_before) == expiry
    assert next_attempt(POLICY, attempts=9, first_queued=T0, now=expiry) is None
    later = expiry + dt.timedelta(days=1)
    assert next_attempt(POLICY, attempts=9, first_queued=T0, now=later) is None


def test_naive_datetimes_are_refused() -> None:
    naive = dt.datetime(2025, 6, 2, 8, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        next_attempt(POLICY, attempts=1, first_queued=naive, now=T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        next_attempt(POLICY, attempts=1, first_queued=T0, now=naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        should_warn_delay(POLICY, naive, T0, False)
    with pytest.raises(ValueError, match="timezone-aware"):
        expires_at(POLICY, naive)


def test_attempts_must_count_a_failure() -> None:
    with pytest.raises(ValueError, match="attempts"):
        next_attempt(POLICY, attempts=0, first_queued=T0, now=T0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"first_seconds": 0},
        {"first_seconds": 600, "max_interval_seconds": 300},
        {"give_up_seconds": 0},
        {"delay_warning_seconds": -1},
    ],
)
def test_policy_rejects_nonsense(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_policy_from_limits() -> None:
    assert RetryPolicy.from_limits(Limits()) == RetryPolicy()
    custom = Limits(retry_first_seconds=60, retry_give_up_seconds=3600)
    policy = RetryPolicy.from_limits(custom)
    assert (policy.first_seconds, policy.give_up_seconds) == (60, 3600)


def test_result_is_utc_and_absolute_across_dst_fall_back() -> None:
    # 2025-10-26 02:30 CEST (first of the two 02:30s) is 00:30 UTC. One hour later is
    # 02:30 CET (01:30 UTC); wall-clock arithmetic would give 03:30 CET, two hours.
    queued = dt.datetime(2025, 10, 26, 2, 30, tzinfo=PARIS, fold=0)
    nxt = next_attempt(POLICY, attempts=5, first_queued=queued, now=queued)
    assert nxt is not None
    assert nxt.tzinfo is UTC
    assert nxt == dt.datetime(2025, 10, 26, 1, 30, tzinfo=UTC)


def test_delay_warning_uses_absolute_time_across_dst_spring_forward() -> None:
    # 00:30 CET on 2025-03-30 is 23:30 UTC the day before; clocks jump 02:00 -> 03:00.
    queued = dt.datetime(2025, 3, 30, 0, 30, tzinfo=PARIS)
    wall_4h30 = dt.datetime(2025, 3, 30, 5, 0, tzinfo=PARIS)  # really 3 h 30 later
    assert not should_warn_delay(POLICY, queued, wall_4h30, False)
    real_4h = dt.datetime(2025, 3, 30, 5, 30, tzinfo=PARIS)
    assert should_warn_delay(POLICY, queued, real_4h, False)


def test_should_warn_delay_table() -> None:
    four_h = dt.timedelta(hours=4)
    assert not should_warn_delay(POLICY, T0, T0, False)
    assert not should_warn_delay(POLICY, T0, T0 + four_h - dt.timedelta(seconds=1), False)
    assert should_warn_delay(POLICY, T0, T0 + four_h, False)
    assert should_warn_delay(POLICY, T0, T0 + dt.timedelta(days=4), False)
    assert not should_warn_delay(POLICY, T0, T0 + dt.timedelta(days=4), True)
    # Expired: a failure DSN is due, not a delay warning.
    assert not should_warn_delay(POLICY, T0, T0 + dt.timedelta(days=5), False)


def test_expires_at_in_utc() -> None:
    queued = dt.datetime(2025, 6, 2, 10, 0, tzinfo=PARIS)  # 08:00 UTC
    assert expires_at(POLICY, queued) == dt.datetime(2025, 6, 7, 8, 0, tzinfo=UTC)
