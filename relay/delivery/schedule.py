"""When to retry a queued message, when to warn the sender, when to give up. Pure.

Postfix-style exponential back-off (``minimal_backoff_time`` 300 s doubling up to
``maximal_backoff_time`` 3600 s, ``maximal_queue_lifetime`` 5 days,
``delay_warning_time`` 4 h): after the n-th failed attempt wait
``first_seconds * 2**(n-1)`` capped at ``max_interval_seconds`` — 5, 10, 20, 40, 60,
60, ... minutes. RFC 5321 §4.5.4.1 asks for a retry interval of at least 30 minutes
and a give-up time of at least 4-5 days; the shorter first intervals are the common
practice (Postfix, Exim) and make greylisting and short outages cheap.

Every datetime must be timezone-aware: computations are done in UTC so that a DST
change never stretches or shrinks an interval (aware datetimes sharing a tzinfo
subtract as wall-clock times in Python).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.config.model import Limits

__all__ = ["RetryPolicy", "expires_at", "next_attempt", "should_warn_delay"]

# 2**62 seconds is far beyond any cap: shifting further is pointless.
_MAX_SHIFT = 62


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry timing for the outbound queue (defaults as in `relay.config.model.Limits`)."""

    first_seconds: int = 300
    max_interval_seconds: int = 3600
    give_up_seconds: int = 5 * 86400
    delay_warning_seconds: int = 4 * 3600

    def __post_init__(self) -> None:
        if self.first_seconds <= 0:
            raise ValueError(f"first_seconds must be > 0, not {self.first_seconds}")
        if self.max_interval_seconds < self.first_seconds:
            raise ValueError(
                f"max_interval_seconds ({self.max_interval_seconds}) must be >= "
                f"first_seconds ({self.first_seconds})"
            )
        if self.give_up_seconds <= 0:
            raise ValueError(f"give_up_seconds must be > 0, not {self.give_up_seconds}")
        if self.delay_warning_seconds <= 0:
            raise ValueError(f"delay_warning_seconds must be > 0, not {self.delay_warning_seconds}")

    @classmethod
    def from_limits(cls, limits: Limits) -> RetryPolicy:
        """The policy configured in ``[limits]``."""
        return cls(
            first_seconds=limits.retry_first_seconds,
            max_interval_seconds=limits.retry_max_interval_seconds,
            give_up_seconds=limits.retry_give_up_seconds,
            delay_warning_seconds=limits.delay_warning_seconds,
        )

    def interval_seconds(self, attempts: int) -> int:
        """The wait after the `attempts`-th failed attempt, before the give-up clamp."""
        if attempts < 1:
            raise ValueError(f"attempts counts failed attempts and must be >= 1, not {attempts}")
        return min(self.first_seconds << min(attempts - 1, _MAX_SHIFT), self.max_interval_seconds)


def _utc(name: str, value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(dt.UTC)


def expires_at(policy: RetryPolicy, first_queued: dt.datetime) -> dt.datetime:
    """The instant (UTC) after which the message is bounced (DSN Will-Retry-Until)."""
    return _utc("first_queued", first_queued) + dt.timedelta(seconds=policy.give_up_seconds)


def next_attempt(
    policy: RetryPolicy, *, attempts: int, first_queued: dt.datetime, now: dt.datetime
) -> dt.datetime | None:
    """When to try again after `attempts` failed attempts, the last one ending `now`.

    Returns None once `now` is at or past the give-up instant: the caller bounces the
    message (failure DSN, status 4.4.7 per RFC 3463 §3.5 when the failures were
    transient). Never returns an instant past the give-up instant, so the last try
    lands exactly at expiry. The result is in UTC.
    """
    interval = policy.interval_seconds(attempts)
    queued = _utc("first_queued", first_queued)
    current = _utc("now", now)
    expiry = queued + dt.timedelta(seconds=policy.give_up_seconds)
    if current >= expiry:
        return None
    return min(current + dt.timedelta(seconds=interval), expiry)


def should_warn_delay(
    policy: RetryPolicy, first_queued: dt.datetime, now: dt.datetime, warned: bool
) -> bool:
    """Whether to send the one "delayed" DSN (RFC 3464 Action: delayed) now.

    True once the message has waited `delay_warning_seconds`, if no warning was sent
    yet and the message has not expired (an expired message gets a failure DSN).
    """
    queued = _utc("first_queued", first_queued)
    current = _utc("now", now)
    if warned:
        return False
    waited = current - queued
    return (
        dt.timedelta(seconds=policy.delay_warning_seconds)
        <= waited
        < dt.timedelta(seconds=policy.give_up_seconds)
    )
