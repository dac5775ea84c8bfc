"""The pure parts of an IMAP4rev2 session (`relay.imap.rev2`, RFC 9051), table-driven:
UTF-8 mailbox names to and from the stored modified UTF-7 form, the commands whose
names are converted, and the search keys RFC 9051 removed."""

from __future__ import annotations

import pytest

from relay.imap import commands as c
from relay.imap import rev2
from relay.imap.parser import parse_command


@pytest.mark.parametrize(
    ("utf8", "stored"),
    [
        ("INBOX", "INBOX"),
        ("Envoyés", "Envoy&AOk-s"),
        ("A&B", "A&-B"),  # "&" is itself in IMAP4rev2, shifted in modified UTF-7
        ("&AOk-", "&-AOk-"),  # a rev2 client's "&AOk-" is those five characters
        ("Éléments supprimés", "&AMk-l&AOk-ments supprim&AOk-s"),
        ("Partages/secretariat@cpts.example/Reçus", "Partages/secretariat@cpts.example/Re&AOc-us"),
        ("日本語", "&ZeVnLIqe-"),
        ("Env*é%", "Env*&AOk-%"),  # LIST wildcards stay as they are
    ],
)
def test_names_between_utf8_and_the_stored_form(utf8: str, stored: str) -> None:
    assert rev2.internal_name(utf8) == stored
    assert rev2.wire_name(stored) == utf8


def test_a_name_is_put_in_nfc_on_the_way_in() -> None:
    # "e" + COMBINING ACUTE ACCENT names the same folder as "é" (RFC 9051 §5.1).
    assert rev2.internal_name("Envoye\u0301s") == rev2.internal_name("Envoyés") == "Envoy&AOk-s"


def test_a_stored_name_that_is_not_modified_utf7_goes_out_as_it_is() -> None:
    assert rev2.wire_name("Bad&Name") == "Bad&Name"


def _parse(line: str) -> c.Command:
    cmd = parse_command(line.encode())
    assert isinstance(cmd, c.Command), cmd
    return cmd


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('a SELECT "Envoyés"', {"mailbox": "Envoy&AOk-s"}),
        ('a STATUS "Reçus" (MESSAGES)', {"mailbox": "Re&AOc-us"}),
        ('a RENAME "A&B" "Données"', {"source": "A&-B", "destination": "Donn&AOk-es"}),
        ('a LIST "Dossiers/" "é*"', {"reference": "Dossiers/", "patterns": ("&AOk-*",)}),
        ('a LSUB "" "Reçus"', {"reference": "", "pattern": "Re&AOc-us"}),
        ('a UID MOVE 1:3 "Archivé"', {"mailbox": "Archiv&AOk-"}),
        ('a MYRIGHTS "Reçus"', {"mailbox": "Re&AOc-us"}),
        ("a SELECT INBOX", {"mailbox": "INBOX"}),
    ],
)
def test_internal_names_converts_every_mailbox_argument(
    line: str, expected: dict[str, object]
) -> None:
    cmd = rev2.internal_names(_parse(line))
    for field, value in expected.items():
        assert getattr(cmd, field) == value


def test_internal_names_converts_notify_mailboxes() -> None:
    cmd = rev2.internal_names(_parse('a NOTIFY SET (mailboxes ("Reçus" "A&B") (MessageNew))'))
    assert isinstance(cmd, c.Notify) and cmd.groups is not None
    assert cmd.groups[0].mailboxes == ("Re&AOc-us", "A&-B")


def test_a_command_without_names_is_left_alone() -> None:
    cmd = _parse("a FETCH 1:* (FLAGS)")
    assert rev2.internal_names(cmd) is cmd


@pytest.mark.parametrize(
    ("criteria", "recent"),
    [
        ("RECENT", True),
        ("NEW", True),
        ("OLD", True),
        ("NOT RECENT", True),
        ("OR SEEN (FLAGGED OLD)", True),
        ("ALL", False),
        ("UNSEEN FROM martin", False),
        ("KEYWORD $Forwarded", False),
        ("OR SEEN (NOT DELETED)", False),
    ],
)
def test_search_keys_that_test_recent(criteria: str, recent: bool) -> None:
    cmd = _parse(f"a SEARCH {criteria}")
    assert isinstance(cmd, c.Search)
    assert rev2.uses_recent(cmd.criteria) is recent


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            'a CREATE "Envoye\u0301s/"',
            '* LIST () "/" "Envoyés" ("OLDNAME" ("Envoye\u0301s"))\r\n',
        ),
        (
            'a RENAME "x" "Rec\u0327us"',
            '* LIST () "/" "Reçus" ("OLDNAME" ("Rec\u0327us"))\r\n',
        ),
        ('a CREATE "Envoyés"', None),  # already NFC
        ('a SELECT "Envoye\u0301s"', None),  # only names being made are reported
    ],
)
def test_oldname_for_a_name_put_in_nfc(line: str, expected: str | None) -> None:
    answer = rev2.oldname(_parse(line))
    assert answer == (None if expected is None else expected.encode())
