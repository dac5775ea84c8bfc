"""The authentication throttle's decisions, table-driven (relay.identity.throttle)."""

from __future__ import annotations

import pytest

from relay.identity.throttle import (
    DELAY_CAP_SECONDS,
    MAX_ENTRIES,
    Decision,
    Throttle,
    ThrottlePolicy,
    Verdict,
)

POLICY = ThrottlePolicy(
    pair_failures_before_lockout=5, address_failures_before_lockout=20, lockout_seconds=300
)
FUZZER, CLINIC, OTHER = "127.0.0.1", "127.0.0.2", "192.0.2.7"

# Each case: failures to feed as (time, address, login), then the question asked.
CASES = [
    ("nothing failed", [], (0, CLINIC, "dupont"), Decision(Verdict.ALLOW)),
    (
        "four failures: not yet",
        [(t, FUZZER, "dupont") for t in range(4)],
        (5, FUZZER, "dupont"),
        Decision(Verdict.ALLOW),
    ),
    (
        "five failures lock the login from that address",
        [(t, FUZZER, "dupont") for t in range(5)],
        (5, FUZZER, "dupont"),
        Decision(Verdict.LOCKED_PAIR, 299),
    ),
    (
        "... not from another address, which has not failed",
        [(t, FUZZER, "dupont") for t in range(50)],
        (50, CLINIC, "dupont"),
        Decision(Verdict.ALLOW),
    ),
    (
        "... and another address that failed once waits its turn, is not refused",
        [(t, FUZZER, "dupont") for t in range(10)] + [(10, OTHER, "dupont")],
        (11, OTHER, "dupont"),
        Decision(Verdict.ALLOW, one_at_a_time=True),
    ),
    (
        "the locked address may still try another login",
        [(t, FUZZER, "dupont") for t in range(5)],
        (6, FUZZER, "martin"),
        Decision(Verdict.ALLOW),
    ),
    (
        "spraying: twenty failures over many logins lock the address",
        [(t, FUZZER, f"user{t}") for t in range(20)],
        (20, FUZZER, "martin"),
        Decision(Verdict.LOCKED_ADDRESS, 299),
    ),
    (
        "spraying from one address does not touch another",
        [(t, FUZZER, f"user{t}") for t in range(40)],
        (40, CLINIC, "user3"),
        Decision(Verdict.ALLOW),
    ),
    (
        "certificate failures (no login) count for the address",
        [(t, FUZZER, None) for t in range(20)],
        (20, FUZZER, "dupont"),
        Decision(Verdict.LOCKED_ADDRESS, 299),
    ),
    (
        "the lock ends",
        [(t, FUZZER, "dupont") for t in range(5)],
        (305, FUZZER, "dupont"),
        Decision(Verdict.ALLOW),
    ),
    (
        "failures older than the window are forgotten",
        [(t, FUZZER, "dupont") for t in (0, 1, 2, 400, 401)],
        (402, FUZZER, "dupont"),
        Decision(Verdict.ALLOW),
    ),
]


@pytest.mark.parametrize(
    ("failures", "question", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_decisions(
    failures: list[tuple[float, str, str | None]],
    question: tuple[float, str, str],
    expected: Decision,
) -> None:
    throttle = Throttle(POLICY)
    for now, address, login in failures:
        throttle.failed(now, address, login)
    got = throttle.before(*question)
    assert got.verdict is expected.verdict
    assert got.one_at_a_time is expected.one_at_a_time
    assert got.retry_after_seconds == pytest.approx(expected.retry_after_seconds, abs=1)


def test_answers_slow_down_per_login_whoever_fails() -> None:
    throttle = Throttle(POLICY)
    delays = [throttle.failed(t, f"198.51.100.{t}", "dupont") for t in range(8)]
    assert delays[0] == pytest.approx(0.1)
    assert delays == sorted(delays) and delays[-1] == DELAY_CAP_SECONDS
    # ... but none of those addresses is refused, and a fresh one is not queued
    assert throttle.before(9, "198.51.100.3", "dupont").verdict is Verdict.ALLOW
    assert throttle.before(9, CLINIC, "dupont") == Decision(Verdict.ALLOW)


def test_success_clears_only_that_login_from_that_address() -> None:
    throttle = Throttle(POLICY)
    for t in range(3):
        throttle.failed(t, FUZZER, "dupont")
    for t in range(10):
        throttle.failed(t, FUZZER, f"user{t}")
    throttle.succeeded(20, FUZZER, "dupont")
    for _ in range(4):  # 7 in a row would have locked dupont without the success
        throttle.failed(21, FUZZER, "dupont")
    assert throttle.before(22, FUZZER, "dupont").verdict is Verdict.ALLOW
    # the address count was not washed by the success: 17 so far, 3 more lock it
    for t in range(3):
        throttle.failed(22, FUZZER, f"spray{t}")
    assert throttle.before(23, FUZZER, "martin").verdict is Verdict.LOCKED_ADDRESS


def test_tables_stay_bounded_under_a_spray() -> None:
    throttle = Throttle(POLICY)
    for i in range(MAX_ENTRIES + 5000):
        throttle.failed(i * 0.001, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", f"u{i}")
    assert max(throttle.sizes()) <= MAX_ENTRIES
