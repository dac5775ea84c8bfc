"""The health decisions, table-driven (pure)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from relay.metrics import CrlFact
from relay.web.health import WRITER_STUCK_SECONDS, HealthFacts, evaluate, render

NOW = dt.datetime(2027, 3, 1, tzinfo=dt.UTC)
FRESH = CrlFact("CN=AC TEST", NOW - dt.timedelta(hours=1), NOW + dt.timedelta(days=1), False)
STALE = CrlFact("CN=AC STALE", NOW - dt.timedelta(days=9), NOW - dt.timedelta(days=2), True)
GOOD = HealthFacts(
    store_error=None,
    writer_alive=True,
    writer_busy_seconds=None,
    writer_waiting=0,
    crl_files=1,
    crls=(FRESH,),
    listeners=(("imap 127.0.0.1:993", True), ("submission 127.0.0.1:587", True)),
)


def test_all_good_is_200_ok() -> None:
    status, body = render(evaluate(GOOD))
    assert status == 200
    assert body.splitlines() == [
        "ok",
        "store: ok: the database answers",
        "writer: ok: running, 0 units waiting",
        "crl: ok: 1 CRL(s) fresh",
        "listeners: ok: 2 accepting connections",
    ]


@pytest.mark.parametrize(
    ("change", "failing", "words"),
    [
        ({"store_error": "no answer within 5 s"}, "store", "does not answer: no answer within 5 s"),
        ({"writer_alive": False}, "writer", "writer has stopped"),
        (
            {"writer_busy_seconds": WRITER_STUCK_SECONDS + 1, "writer_waiting": 7},
            "writer",
            "7 units waiting",
        ),
        ({"crls": ()}, "crl", "no usable CRL"),
        ({"crls": (FRESH, STALE)}, "crl", "CN=AC STALE"),
        (
            {"listeners": (("imap 127.0.0.1:993", False), ("submission 127.0.0.1:587", True))},
            "listeners",
            "not accepting connections: imap 127.0.0.1:993",
        ),
    ],
)
def test_each_failure_is_503_and_named(change: dict[str, object], failing: str, words: str) -> None:
    status, body = render(evaluate(dataclasses.replace(GOOD, **change)))  # type: ignore[arg-type]
    assert status == 503
    lines = body.splitlines()
    assert lines[0] == f"fail: {failing}"
    line = next(x for x in lines[1:] if x.startswith(f"{failing}:"))
    assert "FAIL" in line and words in line


def test_a_busy_writer_below_the_bound_is_fine() -> None:
    facts = dataclasses.replace(GOOD, writer_busy_seconds=WRITER_STUCK_SECONDS - 1)
    assert render(evaluate(facts))[0] == 200


def test_no_crl_files_means_revocation_off_not_a_failure() -> None:
    facts = dataclasses.replace(GOOD, crl_files=0, crls=())
    status, body = render(evaluate(facts))
    assert status == 200 and "revocation checking is off" in body


def test_several_failures_all_named() -> None:
    facts = dataclasses.replace(GOOD, store_error="OperationalError", writer_alive=False)
    assert render(evaluate(facts))[1].splitlines()[0] == "fail: store, writer"
