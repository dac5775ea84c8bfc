"""The replay's pure part (`relay.upstream.replay`): answers read as Dovecot gives them
(lines recorded from Debian's Dovecot 2.3 through aioimaplib), verdicts, UID sets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.upstream.replay import (
    Answer,
    OperatorCaps,
    Verdict,
    appenduid,
    copyuid,
    fetched_flags,
    flag_list,
    imap_quote,
    judge,
    modified,
    parse_uid_set,
    search_uids,
    select_uidvalidity,
    store_args,
    uid_set,
)


def test_answers_as_dovecot_gives_them() -> None:
    assert appenduid(Answer("OK", (b"[APPENDUID 1796196226 2] Append completed.",))) == (
        1796196226,
        2,
    )
    assert appenduid(Answer("OK", (b"Append completed.",))) is None
    move = Answer(
        "OK",
        (b"OK [COPYUID 1796196227 2:3 7,9] Moved UIDs.", b"2 EXPUNGE", b"Move completed."),
    )
    assert copyuid(move) == (1796196227, {2: 7, 3: 9})
    assert modified(Answer("OK", (b"[MODIFIED 1,4:5] Conditional store failed.",))) == [1, 4, 5]
    store = Answer(
        "OK",
        (b"1 FETCH (UID 1 MODSEQ (5) FLAGS (\\Flagged \\Seen $Work))", b"Store completed."),
    )
    assert fetched_flags(store) == {1: (5, frozenset({"\\Flagged", "\\Seen", "$Work"}))}
    assert search_uids(Answer("OK", (b"1 2", b"Search completed."))) == [1, 2]
    assert search_uids(Answer("OK", (b"SEARCH 4", b"Search completed."))) == [4]
    assert search_uids(Answer("OK", (b"Search completed.",))) == []
    select = Answer("OK", (b"2 EXISTS", b"OK [UIDVALIDITY 1796196226] UIDs valid", b"[READ-WRITE]"))
    assert select_uidvalidity(select) == 1796196226


@pytest.mark.parametrize(
    ("kind", "answer", "verdict"),
    [
        ("flags", Answer("OK", (b"Store completed.",)), Verdict.DONE),
        ("create", Answer("NO", (b"[ALREADYEXISTS] Mailbox already exists",)), Verdict.DONE),
        ("rename", Answer("NO", (b"[ALREADYEXISTS] Mailbox already exists",)), Verdict.REFUSED),
        ("delete", Answer("NO", (b"[NONEXISTENT] Mailbox doesn't exist: X",)), Verdict.DONE),
        ("append", Answer("NO", (b"[TRYCREATE] Mailbox doesn't exist: Drafts",)), Verdict.REFUSED),
        ("append", Answer("NO", (b"[OVERQUOTA] Quota exceeded",)), Verdict.REFUSED),
        ("append", Answer("NO", (b"[UNAVAILABLE] Temporary failure",)), Verdict.RETRY),
        ("expunge", Answer("NO", (b"[INUSE] Mailbox is locked",)), Verdict.RETRY),
        ("flags", Answer("BAD", (b"Error in IMAP command",)), Verdict.REFUSED),
    ],
)
def test_verdicts(kind: str, answer: Answer, verdict: Verdict) -> None:
    assert judge(kind, answer) is verdict


def test_commands() -> None:
    assert store_args([3, 1, 2, 7], add=True, flags={"\\Flagged"}, unchanged_since=12) == [
        "1:3,7",
        "(UNCHANGEDSINCE 12)",
        "+FLAGS",
        "(\\Flagged)",
    ]
    assert store_args([5], add=False, flags={"$Work", "\\Seen"}, unchanged_since=None) == [
        "5",
        "-FLAGS",
        "($Work \\Seen)",
    ]
    assert flag_list({"\\Recent", "\\Seen"}) == "(\\Seen)"  # \Recent is per session
    assert imap_quote("INBOX") == "INBOX" and imap_quote("Archives/2025") == "Archives/2025"
    assert imap_quote('Mes "dossiers"') == '"Mes \\"dossiers\\""'
    assert OperatorCaps.from_capabilities(["IMAP4rev1", "QRESYNC", "uidplus"]) == OperatorCaps(
        condstore=True, uidplus=True, move=False
    )
    with pytest.raises(ValueError):
        uid_set([])


@given(st.sets(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=200))
def test_uid_sets_round_trip(uids: set[int]) -> None:
    assert parse_uid_set(uid_set(uids)) == sorted(uids)
