"""summary(): one screen, with co-holder windows marked relative to the day."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from relay.config import load_text, summary
from relay.config.summary import mask_url

TEXT = """\
[server]
hostname = "mss.example.fr"

[storage]
url = "postgresql+asyncpg://relay:hunter2@db/relay"

[tls]
certificate = "server.pem"
key = "server.key"

[[listeners]]
kind = "imap"
address = "[::1]:2993"
tls = "implicit"

[[people]]
id = "martin"
rpps = "10001234567"

[[people]]
id = "leroy"

[[mailboxes]]
address = "cab@cpts.example.fr"
type = "CAB"
owner = "martin"
responsible = "martin"
liste_rouge = true

[[mailboxes.coholders]]
person = "leroy"
rights = ["send", "read"]
valid_from = 2026-07-01
valid_until = 2026-08-31
"""


@pytest.mark.parametrize(
    ("day", "mark"),
    [
        (dt.date(2026, 6, 30), "[not yet active]"),
        (dt.date(2026, 7, 1), None),
        (dt.date(2026, 8, 31), None),
        (dt.date(2026, 9, 1), "[expired]"),
    ],
)
def test_window_marks(day: dt.date, mark: str | None) -> None:
    text = summary(load_text(TEXT, Path("/etc/relay.toml")), today=day)
    (line,) = [x for x in text.splitlines() if x.strip().startswith("leroy")]
    assert "read,send" in line and "2026-07-01..2026-08-31" in line
    if mark is None:
        assert "[" not in line
    else:
        assert line.endswith(mark)


def test_content() -> None:
    text = summary(load_text(TEXT, Path("/etc/relay.toml")), today=dt.date(2026, 7, 1))
    assert "mss.example.fr" in text
    assert "[::1]:2993" in text and "implicit" in text
    assert "people:     2" in text
    assert "cab@cpts.example.fr  CAB  (owner martin, responsible martin" in text
    assert "liste rouge" in text
    assert "hunter2" not in text
    assert len(text.splitlines()) < 25


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+asyncpg://u:p@h/db", "postgresql+asyncpg://u:***@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://h:5432/db", "postgresql+asyncpg://h:5432/db"),
        ("sqlite+aiosqlite:////var/r.db", "sqlite+aiosqlite:////var/r.db"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
