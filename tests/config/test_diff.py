"""diff(): one change per audit event on reload; lost_access(): sessions to close."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from relay.config import KINDS, Config, ConfigChange, diff, load_text, lost_access
from relay.config.model import Coholder, Right, Route, TlsMode
from relay.identity.passwords import hash_password

FILE = Path("/srv/mss/relay.toml")

OLD = """\
[server]
hostname = "mss.example.fr"

[tls]
certificate = "server.pem"
key = "server.key"

[[listeners]]
kind = "imap"
address = "127.0.0.1:2143"
tls = "starttls"

[[people]]
id = "martin"
rpps = "10001234567"

[[people]]
id = "dupont"

[[people]]
id = "leroy"
rpps = "10009876543"

[[mailboxes]]
address = "secretariat@cpts.example.fr"
type = "ORG"
owner = "martin"
responsible = "martin"

[[mailboxes.coholders]]
person = "dupont"
rights = ["read", "flag", "send"]

[[mailboxes.coholders]]
person = "leroy"
rights = ["read"]
valid_from = 2026-01-01
valid_until = 2026-06-30
"""


@pytest.fixture
def old() -> Config:
    return load_text(OLD, FILE)


def changed(old_text: str, new_text: str) -> list[ConfigChange]:
    return diff(load_text(old_text, FILE), load_text(new_text, FILE))


def summary_of(changes: list[ConfigChange]) -> list[tuple[str, str | None, str | None]]:
    return [(c.kind, c.box, c.person) for c in changes]


def test_identical_configs(old: Config) -> None:
    assert diff(old, old) == []
    assert diff(old, load_text(OLD, FILE)) == []


def test_rights_changed() -> None:
    changes = changed(OLD, OLD.replace('["read", "flag", "send"]', '["read"]'))
    assert changes == [
        ConfigChange(
            "rights_changed", "secretariat@cpts.example.fr", "dupont", "read,flag,send -> read"
        )
    ]


def test_window_changed() -> None:
    changes = changed(OLD, OLD.replace("2026-06-30", "2026-03-31"))
    assert summary_of(changes) == [("window_changed", "secretariat@cpts.example.fr", "leroy")]
    assert changes[0].detail == "2026-01-01..2026-06-30 -> 2026-01-01..2026-03-31"


def test_coholder_removed_and_added() -> None:
    without_leroy = OLD.split('[[mailboxes.coholders]]\nperson = "leroy"')[0]
    changes = changed(OLD, without_leroy)
    assert summary_of(changes) == [("coholder_removed", "secretariat@cpts.example.fr", "leroy")]
    back = changed(without_leroy, OLD)
    assert summary_of(back) == [("coholder_added", "secretariat@cpts.example.fr", "leroy")]
    assert back[0].detail == "rights read, 2026-01-01..2026-06-30"


def test_mailbox_added_with_its_coholders_and_removed() -> None:
    extra = (
        '[[mailboxes]]\naddress = "cab@cpts.example.fr"\ntype = "CAB"\nowner = "leroy"\n'
        'responsible = "leroy"\n[[mailboxes.coholders]]\nperson = "dupont"\nrights = ["read"]\n'
    )
    added = changed(OLD, OLD + extra)
    assert summary_of(added) == [
        ("mailbox_added", "cab@cpts.example.fr", None),
        ("coholder_added", "cab@cpts.example.fr", "dupont"),
    ]
    assert summary_of(changed(OLD + extra, OLD)) == [
        ("mailbox_removed", "cab@cpts.example.fr", None)
    ]


def test_mailbox_changed() -> None:
    changes = changed(OLD, OLD.replace('responsible = "martin"', 'responsible = "leroy"'))
    assert changes == [
        ConfigChange(
            "mailbox_changed", "secretariat@cpts.example.fr", None, "responsible: martin -> leroy"
        )
    ]


def test_people_added_removed_changed() -> None:
    new = OLD + '[[people]]\nid = "garcia"\n'
    assert summary_of(changed(OLD, new)) == [("person_added", None, "garcia")]
    assert summary_of(changed(new, OLD)) == [("person_removed", None, "garcia")]
    renamed = OLD.replace('id = "dupont"', 'id = "dupont"\ndisplay_name = "Julie Dupont"')
    assert summary_of(changed(OLD, renamed)) == [("person_changed", None, "dupont")]


def test_credentials_changed_never_shows_the_hash(old: Config) -> None:
    phc = hash_password("s3cret")
    dupont = old.person("dupont")
    assert dupont is not None
    new_people = tuple(
        dataclasses.replace(p, password_hash=phc, certificate_fingerprints=frozenset({"ab" * 32}))
        if p.id == "dupont"
        else p
        for p in old.people
    )
    changes = diff(old, dataclasses.replace(old, people=new_people))
    assert summary_of(changes) == [("credentials_changed", None, "dupont")]
    assert changes[0].detail == f"password set; certificate added {'ab' * 32}"
    assert phc not in changes[0].detail

    login = OLD.replace('id = "dupont"', 'id = "dupont"\nlogin = "j.dupont"')
    (change,) = changed(OLD, login)
    assert (change.kind, change.person, change.detail) == (
        "credentials_changed",
        "dupont",
        "login: dupont -> j.dupont",
    )


def test_listeners_and_routes_changed(old: Config) -> None:
    moved = OLD.replace("127.0.0.1:2143", "127.0.0.1:3143")
    (change,) = changed(OLD, moved)
    assert change.kind == "listeners_changed"
    assert change.detail == (
        "- imap 127.0.0.1:2143 tls=starttls; + imap 127.0.0.1:3143 tls=starttls"
    )
    route = Route("*.mssante.fr", "", 25, None, True)
    (change,) = diff(old, dataclasses.replace(old, routes=(route,)))
    assert (change.kind, change.detail) == ("routes_changed", "+ *.mssante.fr -> MX:25")


def test_storage_change_masks_password(old: Config) -> None:
    storage = dataclasses.replace(
        old.storage, url="postgresql+asyncpg://relay:hunter2@db.example.fr/relay"
    )
    (change,) = diff(old, dataclasses.replace(old, storage=storage))
    assert change.kind == "storage_changed"
    assert "hunter2" not in change.detail
    assert "postgresql+asyncpg://relay:***@db.example.fr/relay" in change.detail


def test_tls_and_limits_changed(old: Config) -> None:
    new = dataclasses.replace(
        old,
        tls=dataclasses.replace(old.tls, minimum_version="1.3"),
        limits=dataclasses.replace(old.limits, max_recipients=50),
    )
    assert [(c.kind, c.detail) for c in diff(old, new)] == [
        ("tls_changed", "minimum_version: 1.2 -> 1.3"),
        ("limits_changed", "max_recipients: 100 -> 50"),
    ]


def test_every_kind_is_declared(old: Config) -> None:
    new = dataclasses.replace(
        old,
        listeners=(dataclasses.replace(old.listeners[0], tls=TlsMode.IMPLICIT),),
        mailboxes=(),
        people=old.people[:1],
    )
    kinds = {c.kind for c in diff(old, new)} | {c.kind for c in diff(new, old)}
    assert kinds <= KINDS
    assert {"listeners_changed", "mailbox_removed", "person_removed", "person_added"} <= kinds


def test_lost_access(old: Config) -> None:
    during = dt.date(2026, 3, 1)
    after = dt.date(2026, 9, 1)
    box = old.mailboxes[0]
    shorter = dataclasses.replace(
        box,
        coholders=(
            Coholder(
                "dupont", frozenset({Right.READ, Right.FLAG, Right.SEND, Right.DELETE}), None, None
            ),
            Coholder("leroy", frozenset({Right.READ}), dt.date(2026, 1, 1), dt.date(2026, 2, 28)),
        ),
    )
    new = dataclasses.replace(old, mailboxes=(shorter,))
    # more rights for dupont is not a loss; leroy's window closed before `during`
    assert lost_access(old, new, during) == {("secretariat@cpts.example.fr", "leroy")}
    # after the old window leroy had nothing to lose
    assert lost_access(old, new, after) == set()
    # removing the box or a person removes access
    assert lost_access(old, dataclasses.replace(old, mailboxes=()), during) == {
        ("secretariat@cpts.example.fr", "martin"),
        ("secretariat@cpts.example.fr", "dupont"),
        ("secretariat@cpts.example.fr", "leroy"),
    }
    no_dupont = tuple(p for p in old.people if p.id != "dupont")
    assert lost_access(old, dataclasses.replace(old, people=no_dupont), after) == {
        ("secretariat@cpts.example.fr", "dupont")
    }
