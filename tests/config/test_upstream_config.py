"""``[mailboxes.upstream]`` (gateway mode): strictly read, every problem at its key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relay.config import ConfigError, check_files, load_text
from relay.config.model import TlsMode
from relay.config.summary import describe_upstream
from tests.config.test_loader import BASE, FILE, assert_problem, edit, problems

HOSTED = """
[[mailboxes]]
address = "cpts@coordo.operateur.mssante.fr"
type = "ORG"
owner = "martin"
responsible = "martin"

[mailboxes.upstream]
imap = "imaps://imap.operateur.mssante.fr"
submission = "smtp://smtp.operateur.mssante.fr:587"
login = "cpts@coordo.operateur.mssante.fr"
password_file = "secrets/cpts.password"
trust_anchors = ["tls/igc-sante.pem"]
"""


def hosted(old: str = "", new: str = "") -> str:
    text = BASE + HOSTED
    return edit(old, new, text) if old else text


def test_upstream_read_with_defaults() -> None:
    config = load_text(hosted(), FILE)
    box = config.mailbox("cpts@coordo.operateur.mssante.fr")
    assert box is not None and box.upstream is not None
    up = box.upstream
    assert (up.imap.host, up.imap.port, up.imap.tls) == (
        "imap.operateur.mssante.fr",
        993,
        TlsMode.IMPLICIT,
    )
    assert up.submission is not None
    assert (up.submission.port, up.submission.tls) == (587, TlsMode.STARTTLS)
    assert up.password_file == Path("/srv/mss/secrets/cpts.password")
    assert up.trust_anchors == (Path("/srv/mss/tls/igc-sante.pem"),)
    assert up.folders is None and up.mirrors("Archives/2024")
    assert up.poll_interval_seconds == 60 and up.idle
    assert config.upstream_boxes() == (box,)
    # The operator's domain is not ours: its other addresses are remote recipients.
    assert config.server.local_domains == frozenset({"cpts.example.fr"})
    assert "imaps://imap.operateur.mssante.fr:993" in describe_upstream(box)


@pytest.mark.parametrize(
    ("url", "mode", "port"),
    [
        ("imap://imap.op.fr", TlsMode.STARTTLS, 143),
        ("imaps://imap.op.fr:10993", TlsMode.IMPLICIT, 10993),
        ("IMAPS://127.0.0.1:993/", TlsMode.IMPLICIT, 993),
    ],
)
def test_imap_endpoints(url: str, mode: TlsMode, port: int) -> None:
    text = hosted('imap = "imaps://imap.operateur.mssante.fr"', f'imap = "{url}"')
    box = load_text(text, FILE).mailboxes[-1]
    assert box.upstream is not None
    assert (box.upstream.imap.tls, box.upstream.imap.port) == (mode, port)


def test_submission_implicit_and_optional() -> None:
    text = hosted('"smtp://smtp.operateur.mssante.fr:587"', '"smtps://smtp.operateur.mssante.fr"')
    up = load_text(text, FILE).mailboxes[-1].upstream
    assert up is not None and up.submission is not None
    assert (up.submission.tls, up.submission.port) == (TlsMode.IMPLICIT, 465)
    text = hosted('submission = "smtp://smtp.operateur.mssante.fr:587"\n', "")
    up = load_text(text, FILE).mailboxes[-1].upstream
    assert up is not None and up.submission is None


KEY = "mailboxes[1].upstream"


@pytest.mark.parametrize(
    ("old", "new", "key", "fragment"),
    [
        ('"imaps://imap.operateur.mssante.fr"', '"http://x.fr"', "imap", "expected imaps://"),
        ('"imaps://imap.operateur.mssante.fr"', '"imap.op.fr:993"', "imap", "expected imaps://"),
        ('"imaps://imap.operateur.mssante.fr"', '"imaps://op.fr:0"', "imap", "port"),
        ('"imaps://imap.operateur.mssante.fr"', '"imaps://bad_host"', "imap", "domain"),
        ('"smtp://smtp.operateur.mssante.fr:587"', '"imap://x.fr"', "submission", "smtp://"),
        ('login = "cpts@coordo.operateur.mssante.fr"\n', "", "login", "missing"),
        ('trust_anchors = ["tls/igc-sante.pem"]\n', "", "trust_anchors", "required"),
        ('trust_anchors = ["tls/igc-sante.pem"]', "trust_anchors = []", "trust_anchors", "one"),
        ('password_file = "secrets/cpts.password"\n', "", "password_file", "credential"),
        (
            'password_file = "secrets/cpts.password"',
            'password_file = "p"\ncertificate = "c.pem"\nkey = "c.key"',
            "certificate",
            "not both",
        ),
        ('password_file = "secrets/cpts.password"', 'certificate = "c.pem"', "key", "together"),
        ('password_file = "secrets/cpts.password"', 'key = "c.key"', "certificate", "together"),
        ("login =", 'folders = ["Sent", "Sent"]\nlogin =', "folders", "twice"),
        ("login =", 'folders = ["Archives//2024"]\nlogin =', "folders[0]", "empty level"),
        ("login =", "poll_interval_seconds = 1\nlogin =", "poll_interval_seconds", "from 5"),
        ("login =", "idle = 1\nlogin =", "idle", "boolean"),
        ("login =", 'pasword_file = "x"\nlogin =', "pasword_file", "unknown key"),
    ],
)
def test_upstream_problems_name_their_key(old: str, new: str, key: str, fragment: str) -> None:
    assert_problem(hosted(old, new), f"{KEY}.{key}", fragment)


def test_upstream_not_a_table() -> None:
    text = BASE + HOSTED.split("[mailboxes.upstream]")[0].replace(
        'responsible = "martin"\n', 'responsible = "martin"\nupstream = "imaps://x"\n'
    )
    keys = [p.key for p in problems(text)]
    assert keys[0] == "mailboxes[1].upstream"


def test_explicit_local_domains_need_not_list_the_operator() -> None:
    text = hosted(
        'hostname = "mss.example.fr"',
        'hostname = "mss.example.fr"\nlocal_domains = ["cpts.example.fr"]',
    )
    config = load_text(text, FILE)
    assert config.server.local_domains == frozenset({"cpts.example.fr"})


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def test_check_files_credential_must_be_private(tmp_path: Path) -> None:
    config_file = tmp_path / "relay.toml"
    config = load_text(hosted(), config_file)
    found = {p.key: p.message for p in check_files(config)}
    assert "file not found" in found[f"{KEY}.password_file"]
    assert "file not found" in found[f"{KEY}.trust_anchors[0]"]
    _write(tmp_path / "secrets/cpts.password", "secret\n", 0o644)
    _write(tmp_path / "tls/igc-sante.pem", "pem", 0o644)
    found = {p.key: p.message for p in check_files(config)}
    assert f"{KEY}.trust_anchors[0]" not in found
    assert "readable by other users (mode 0644)" in found[f"{KEY}.password_file"]
    assert "chmod 600" in found[f"{KEY}.password_file"]
    os.chmod(tmp_path / "secrets/cpts.password", 0o600)
    assert f"{KEY}.password_file" not in {p.key for p in check_files(config)}


def test_check_files_certificate_and_key(tmp_path: Path) -> None:
    text = hosted(
        'password_file = "secrets/cpts.password"',
        'certificate = "box/cert.pem"\nkey = "box/key.pem"',
    )
    config = load_text(text, tmp_path / "relay.toml")
    _write(tmp_path / "tls/igc-sante.pem", "pem", 0o644)
    _write(tmp_path / "box/cert.pem", "pem", 0o644)
    _write(tmp_path / "box/key.pem", "key", 0o640)
    found = {p.key: p.message for p in check_files(config)}
    assert set(found) >= {f"{KEY}.key"} and f"{KEY}.certificate" not in found
    assert "mode 0640" in found[f"{KEY}.key"]


def test_problems_are_all_reported_together() -> None:
    text = hosted('login = "cpts@coordo.operateur.mssante.fr"\n', "").replace(
        'trust_anchors = ["tls/igc-sante.pem"]\n', ""
    )
    with pytest.raises(ConfigError) as info:
        load_text(text, FILE)
    assert {p.key for p in info.value.problems} == {f"{KEY}.login", f"{KEY}.trust_anchors"}


def test_diff_names_the_upstream_change() -> None:
    from relay.config import diff

    old = load_text(hosted(), FILE)
    new = load_text(
        hosted('imaps://imap.operateur.mssante.fr"', 'imaps://imap2.operateur.mssante.fr"'), FILE
    )
    (change,) = diff(old, new)
    assert change.kind == "mailbox_changed"
    assert "upstream imaps://imap.operateur.mssante.fr:993" in change.detail
    assert "-> imaps://imap2.operateur.mssante.fr:993" in change.detail
