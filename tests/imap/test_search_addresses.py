"""SEARCH FROM / TO / CC / BCC match on whole address, local part, domain and display
name, decoded, as Dovecot does (RFC 3501 §6.4.4 leaves the matching to the server).
The cases are those of imaptest's ``search-addresses`` script, plus encoded names."""

from __future__ import annotations

import pytest

from relay.imap import commands as c
from relay.imap.search import Candidate, matches
from relay.message.analysis import analyse
from relay.message.imapview import address_search_text

FROM_FORMS = {
    "plain": "user-from@domain.org",
    "named": "RealFrom <user-from@domain.org>",
    "commented": "<user-from (comment)@ (comment) domain.org>",
    "comment-name": "user-from@domain.org (RealFrom)",
    "two": "user-from1@domain.org, user-from2@domain.org",
    "group": "groupname: groupuser1@domain.org, groupuser2@domain.org;,\r\n"
    "  groupname2: groupuser3@domain.org;",
    "empty-group": "groupname:;",
    "encoded": "=?utf-8?q?Andr=C3=A9_M=C3=BCller?= <andre@cabinet.example>",
    "quoted": '"Dupont, Marie" <m.dupont@cpts.example>',
}


def _found(header: str, needle: str, field: str = "FROM") -> bool:
    raw = f"{field.title()}: {header}\r\nSubject: x\r\n\r\nbody\r\n".encode()
    meta = analyse(raw)
    cand = Candidate(seq=1, uid=1, flags=frozenset(), modseq=1, meta=meta, raw=raw)
    return matches(c.SearchHeader(field, needle), cand, messages=1, largest_uid=1)


@pytest.mark.parametrize(
    ("form", "needle", "found"),
    [
        ("plain", "user-from@domain.org", True),
        ("named", "user-from@domain.org", True),
        ("commented", "user-from@domain.org", True),  # comments are not the address
        ("comment-name", "user-from@domain.org", True),
        ("two", "user-from@domain.org", False),
        ("named", "realfrom", True),  # display name, any case
        ("comment-name", "realfrom", True),  # a comment stands for the name
        ("plain", "realfrom", False),
        ("commented", "comment", False),
        ("plain", "ser-fro", True),  # substring of the local part
        ("named", "ealfro", True),
        ("two", "user-from1", True),
        ("two", "user-from2", True),
        ("plain", "domain.org", True),  # the domain
        ("encoded", "andré müller", True),  # RFC 2047 name decoded
        ("encoded", "=?utf-8?", False),
        ("encoded", "andre@cabinet", True),
        ("quoted", "dupont, marie", True),
        ("quoted", "m.dupont@cpts.example", True),
    ],
)
def test_from(form: str, needle: str, found: bool) -> None:
    assert _found(FROM_FORMS[form], needle) is found


@pytest.mark.parametrize(
    ("needle", "found_in"),
    [
        ("groupname", {"group", "empty-group"}),
        ("groupname2", {"group"}),
        ("groupuser1", {"group"}),
        ("groupuser3", {"group"}),
        ("groupuser4", set()),
    ],
)
def test_group_names_and_members_match(needle: str, found_in: set[str]) -> None:
    for form in ("group", "empty-group", "plain"):
        assert _found(FROM_FORMS[form], needle, "TO") is (form in found_in), form


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("user@host", "user@host"),
        ("Name <user@host>", "Name <user@host>"),
        ("user@host (Name)", "Name <user@host>"),
        ("g: a@b, c@d;, e@f", "g: a@b, c@d;, e@f"),
        ("g:;", "g: ;"),
        ("=?iso-8859-1?q?Fran=E7ois?= <f@x>", "François <f@x>"),
    ],
)
def test_address_search_text(value: str, text: str) -> None:
    assert address_search_text(value) == text
