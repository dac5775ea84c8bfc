"""The flag-only fast path of SEARCH (`flag_predicate`) answers as `matches` does,
for every shape of criteria made of flag tests, and declines any other criteria."""

from __future__ import annotations

import random

from relay.imap import commands as c
from relay.imap.search import Candidate, flag_predicate, matches

FLAGS = ("\\Seen", "\\Deleted", "\\Flagged", "\\Recent", "$Forwarded", "$label1")


def _key(rng: random.Random, depth: int) -> c.SearchKey:
    kind = rng.choice(["flag", "flag", "all"] + (["not", "or", "and"] if depth < 3 else []))
    if kind == "flag":
        flag = rng.choice(FLAGS)
        return c.SearchFlag(flag.upper() if rng.random() < 0.2 else flag, rng.random() < 0.5)
    if kind == "all":
        return c.SearchAll()
    if kind == "not":
        return c.SearchNot(_key(rng, depth + 1))
    if kind == "or":
        return c.SearchOr(_key(rng, depth + 1), _key(rng, depth + 1))
    return c.SearchAnd(tuple(_key(rng, depth + 1) for _ in range(rng.randint(1, 3))))


def test_same_answer_as_matches() -> None:
    rng = random.Random(5)
    for _ in range(2000):
        key = _key(rng, 0)
        flags = frozenset(rng.sample(FLAGS, k=rng.randint(0, 4)))
        test = flag_predicate(key)
        assert test is not None
        cand = Candidate(seq=1, uid=1, flags=flags, modseq=1)
        assert test(flags) == matches(key, cand, messages=1, largest_uid=1), (key, flags)


def test_declines_criteria_beyond_flags() -> None:
    size = c.SearchSize(larger=True, size=10)
    assert flag_predicate(size) is None
    assert flag_predicate(c.SearchAnd((c.SearchFlag("\\Seen", False), size))) is None
    assert flag_predicate(c.SearchOr(c.SearchAll(), c.SearchNot(size))) is None
