"""The flags a selected mailbox announces (RFC 3501 §7.2.6, §7.1 PERMANENTFLAGS), pure."""

from __future__ import annotations

import pytest

from relay.imap.flags import MailboxFlags, is_keyword, permanent_system_flags, shown

FLAGS_SYSTEM = b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft"


def test_a_new_keyword_is_announced_once_before_it_is_shown() -> None:
    mf = MailboxFlags(permanent=("\\Seen", "\\Flagged"), new_keywords=True)
    assert mf.learn({"\\Seen"}) == []
    first = mf.learn({"$label1", "\\Flagged"})
    assert first == [
        FLAGS_SYSTEM + b" $label1)\r\n",
        b"* OK [PERMANENTFLAGS (\\Seen \\Flagged $label1 \\*)] Flags permitted\r\n",
    ]
    assert mf.learn({"$label1"}) == []  # already known: nothing more
    second = mf.learn({"Old", "$Forwarded", "$label1"})
    # the list only grows: every keyword announced so far stays in it
    assert second[0] == FLAGS_SYSTEM + b" $label1 $Forwarded Old)\r\n"
    assert mf.keywords == ["$label1", "$Forwarded", "Old"]
    # the same keyword on several messages at once is announced once
    third = mf.learn(["$MDNSent", "$MDNSent"])
    assert third[0] == FLAGS_SYSTEM + b" $label1 $Forwarded Old $MDNSent)\r\n"


@pytest.mark.parametrize(
    ("rights", "new_keywords", "line"),
    [
        # full rights: system flags, keywords and \* (new keywords may be made)
        ("lrswite", True, b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft"),
        # read and \Seen only (a replacement): \Seen alone, no keyword
        ("lrs", False, b"* OK [PERMANENTFLAGS (\\Seen)] Flags permitted"),
        # read only: nothing permanent
        ("lr", False, b"* OK [PERMANENTFLAGS ()] No permanent flags permitted"),
    ],
)
def test_permanentflags_follow_the_rights(rights: str, new_keywords: bool, line: bytes) -> None:
    mf = MailboxFlags(permanent=permanent_system_flags(rights), new_keywords=new_keywords)
    _, permanent = mf.responses()
    assert permanent.startswith(line)
    assert permanent.endswith(b"\\*)] Flags permitted\r\n") == new_keywords


def test_read_only_keywords_are_listed_in_flags_but_not_permanent() -> None:
    mf = MailboxFlags(permanent=(), new_keywords=False, keywords=["$MDNSent"])
    flags, permanent = mf.responses()
    assert flags == FLAGS_SYSTEM + b" $MDNSent)\r\n"
    assert b"PERMANENTFLAGS ()" in permanent


@pytest.mark.parametrize(
    ("flags", "recent", "expected"),
    [
        (set(), False, b"()"),
        (set(), True, b"(\\Recent)"),
        ({"\\Seen", "$hello", "\\Answered"}, True, b"(\\Recent $hello \\Answered \\Seen)"),
        ({"NIL"}, False, b"(NIL)"),
    ],
)
def test_shown_flags_add_recent_for_this_session(
    flags: set[str], recent: bool, expected: bytes
) -> None:
    assert shown(flags, recent=recent) == expected


@pytest.mark.parametrize(
    ("flag", "keyword"), [("$Forwarded", True), ("Old", True), ("\\Seen", False), ("\\X", False)]
)
def test_is_keyword(flag: str, keyword: bool) -> None:
    assert is_keyword(flag) is keyword
