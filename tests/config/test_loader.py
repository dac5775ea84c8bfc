"""The strict loader: every error kind names its exact key path; all are reported."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.config import Config, ConfigError, Problem, check_files, load, load_text
from relay.config.model import BoxType, HttpEndpoint, ListenerKind, Right, SeenMode, TlsMode

FILE = Path("/srv/mss/relay.toml")

BASE = """\
[server]
hostname = "mss.example.fr"

[tls]
certificate = "tls/server.pem"
key = "tls/server.key"
trust_anchors = ["tls/ca.pem"]

[[listeners]]
kind = "imap"
address = "127.0.0.1:2143"
tls = "starttls"

[[people]]
id = "martin"
rpps = "10001234567"

[[people]]
id = "dupont"

[[mailboxes]]
address = "secretariat@cpts.example.fr"
type = "ORG"
owner = "martin"
responsible = "martin"

[[mailboxes.coholders]]
person = "dupont"
rights = ["read"]
"""

LISTENER = """
[[listeners]]
kind = "{kind}"
address = "{address}"
tls = "{tls}"
"""


def problems(text: str) -> tuple[Problem, ...]:
    with pytest.raises(ConfigError) as info:
        load_text(text, FILE)
    assert info.value.problems, "a ConfigError always carries problems"
    return info.value.problems


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def assert_problem(text: str, key: str, fragment: str) -> Problem:
    """Exactly one problem, at `key`, whose message contains `fragment`."""
    found = problems(text)
    assert [p.key for p in found] == [key], [str(p) for p in found]
    (problem,) = found
    assert fragment in problem.message
    assert str(problem) == f"{FILE}: {key}: {problem.message}"
    return problem


def test_base_loads() -> None:
    config = load_text(BASE, FILE)
    assert isinstance(config, Config)
    assert config.server.hostname == "mss.example.fr"
    assert config.server.local_domains == frozenset({"cpts.example.fr"})
    box = config.mailbox("Secretariat@CPTS.example.fr")
    assert box is not None
    assert box.type is BoxType.ORG
    assert box.seen is SeenMode.SHARED
    assert not box.liste_rouge and not box.pharmacy
    assert box.coholders[0].rights == frozenset({Right.READ})
    person = config.person("dupont")
    assert person is not None
    assert person.login == "dupont" and person.display_name == "dupont"
    assert person.rpps is None and person.password_hash is None


def test_problem_str_format() -> None:
    problem = Problem("a.toml", "limits.max_recipients", "expected an integer, got a string")
    assert str(problem) == "a.toml: limits.max_recipients: expected an integer, got a string"


# ------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key() -> None:
    assert_problem('colour = "blue"\n' + BASE, "colour", "unknown key")


def test_unknown_top_level_table() -> None:
    assert_problem(BASE + "[extras]\na = 1\n", "extras", "unknown key")


def test_unknown_nested_key() -> None:
    text = edit('hostname = "mss.example.fr"', 'hostname = "mss.example.fr"\nhostnme = "x"')
    assert_problem(text, "server.hostnme", "unknown key")


def test_unknown_key_in_coholder() -> None:
    text = BASE + "valid_untill = 2026-01-01\n"
    assert_problem(text, "mailboxes[0].coholders[0].valid_untill", "unknown key")


def test_unknown_limit() -> None:
    assert_problem(BASE + "[limits]\nmax_foo_bytes = 3\n", "limits.max_foo_bytes", "unknown key")


# -------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("old", "new", "key", "fragment"),
    [
        (
            'hostname = "mss.example.fr"',
            "hostname = 42",
            "server.hostname",
            "expected a string, got an integer",
        ),
        ('rpps = "10001234567"', "rpps = 10001234567", "people[0].rpps", "expected a string"),
        (
            'rights = ["read"]',
            'rights = "read"',
            "mailboxes[0].coholders[0].rights",
            "expected an array of strings, got a string",
        ),
        (
            'rights = ["read"]',
            'rights = ["read", 3]',
            "mailboxes[0].coholders[0].rights[1]",
            "expected a string, got an integer",
        ),
        (
            'type = "ORG"',
            'type = "ORG"\nliste_rouge = "yes"',
            "mailboxes[0].liste_rouge",
            "expected a boolean",
        ),
        (
            'trust_anchors = ["tls/ca.pem"]',
            'trust_anchors = "tls/ca.pem"',
            "tls.trust_anchors",
            "expected an array of strings",
        ),
        (
            'rights = ["read"]',
            'rights = ["read"]\nvalid_from = "2026-01-01"',
            "mailboxes[0].coholders[0].valid_from",
            "expected a date (YYYY-MM-DD, unquoted), got a string",
        ),
        (
            'rights = ["read"]',
            'rights = ["read"]\nvalid_from = 2026-01-01T08:00:00',
            "mailboxes[0].coholders[0].valid_from",
            "got a date-time",
        ),
    ],
)
def test_wrong_type(old: str, new: str, key: str, fragment: str) -> None:
    assert_problem(edit(old, new), key, fragment)


def test_wrong_type_limit() -> None:
    text = BASE + '[limits]\nmax_recipients = "100"\n'
    assert_problem(text, "limits.max_recipients", "expected an integer, got a string")


def test_boolean_is_not_an_integer() -> None:
    text = BASE + "[limits]\nmax_recipients = true\n"
    assert_problem(text, "limits.max_recipients", "expected an integer, got a boolean")


def test_limit_must_be_positive() -> None:
    text = BASE + "[limits]\nmax_line_bytes = 0\n"
    assert_problem(text, "limits.max_line_bytes", "≥ 1")


def test_section_of_wrong_shape() -> None:
    text = edit('[[listeners]]\nkind = "imap"', '[listeners]\nkind = "imap"')
    assert_problem(text, "listeners", "expected an array of tables ([[listeners]]), got a table")


# --------------------------------------------------------------- missing required


def test_missing_hostname() -> None:
    assert_problem(edit('hostname = "mss.example.fr"\n', ""), "server.hostname", "required key")


def test_missing_rights() -> None:
    text = edit('rights = ["read"]\n', "")
    assert_problem(text, "mailboxes[0].coholders[0].rights", "required key is missing")


def test_empty_rights() -> None:
    text = edit('rights = ["read"]', "rights = []")
    assert_problem(text, "mailboxes[0].coholders[0].rights", "at least one")


def test_unknown_right() -> None:
    text = edit('rights = ["read"]', 'rights = ["read", "admin"]')
    assert_problem(text, "mailboxes[0].coholders[0].rights[1]", "\"manage\", got 'admin'")


def test_missing_listener_tls() -> None:
    assert_problem(edit('tls = "starttls"\n', ""), "listeners[0].tls", "required key")


# ----------------------------------------------------------------------- values


@pytest.mark.parametrize(
    "address",
    ["not-an-address", "a b@cpts.example.fr", "x@-bad-.fr", "x@", "@cpts.example.fr"],
)
def test_bad_mailbox_address(address: str) -> None:
    text = edit('address = "secretariat@cpts.example.fr"', f'address = "{address}"')
    assert_problem(text, "mailboxes[0].address", "not a valid")


def test_mailbox_address_is_lower_cased() -> None:
    text = edit("secretariat@cpts.example.fr", "Secretariat@CPTS.Example.FR")
    box = load_text(text, FILE).mailboxes[0]
    assert box.address == "secretariat@cpts.example.fr"


def test_duplicate_mailbox_address() -> None:
    text = BASE + '[[mailboxes]]\naddress = "SECRETARIAT@cpts.example.fr"\ntype = "APP"\n'
    assert_problem(text, "mailboxes[1].address", "duplicate mailbox address")


def test_duplicate_person_id() -> None:
    text = BASE + '[[people]]\nid = "dupont"\nlogin = "j.dupont"\n'
    assert_problem(text, "people[2].id", 'duplicate person id "dupont" (also people[1])')


def test_duplicate_login() -> None:
    text = edit('id = "dupont"', 'id = "dupont"\nlogin = "martin"')
    assert_problem(text, "people[1].login", 'duplicate login "martin" (also people[0]')


@pytest.mark.parametrize("pid", ["Martin", "-x", "a b", ""])
def test_bad_person_id(pid: str) -> None:
    text = BASE + f'[[people]]\nid = "{pid}"\n'
    assert_problem(text, "people[2].id", "")


def test_malformed_id_does_not_cascade() -> None:
    text = edit('id = "dupont"', 'id = "Dupont"')
    text = edit('person = "dupont"', 'person = "Dupont"', text)
    assert_problem(text, "people[1].id", "not a valid person id")


def test_login_with_star_refused() -> None:
    text = edit('id = "dupont"', 'id = "dupont"\nlogin = "dupont*box"')
    assert_problem(text, "people[1].login", "'*'")


def test_coholder_unknown_person() -> None:
    text = edit('person = "dupont"', 'person = "durand"')
    assert_problem(text, "mailboxes[0].coholders[0].person", 'unknown person "durand"')


def test_coholder_listed_twice() -> None:
    text = BASE + '[[mailboxes.coholders]]\nperson = "dupont"\nrights = ["flag"]\n'
    assert_problem(text, "mailboxes[0].coholders[1].person", "already a co-holder")


def test_owner_unknown_person() -> None:
    assert_problem(edit('owner = "martin"', 'owner = "nobody"'), "mailboxes[0].owner", "unknown")


def test_responsible_unknown_person() -> None:
    text = edit('responsible = "martin"', 'responsible = "nobody"')
    assert_problem(text, "mailboxes[0].responsible", 'unknown person "nobody"')


@pytest.mark.parametrize("box_type", ["ORG", "CAB"])
def test_responsible_without_rpps(box_type: str) -> None:
    text = edit('responsible = "martin"', 'responsible = "dupont"')
    text = edit('type = "ORG"', f'type = "{box_type}"', text)
    problem = assert_problem(text, "mailboxes[0].responsible", '"dupont" has no RPPS')
    assert "created under the responsibility of an authorised professional" in problem.message


def test_org_without_responsible() -> None:
    problem = assert_problem(edit('responsible = "martin"\n', ""), "mailboxes[0].responsible", "")
    assert "authorised professional" in problem.message


def test_org_needs_owner_or_structure() -> None:
    assert_problem(edit('owner = "martin"\n', ""), "mailboxes[0].owner", "structure_id")
    # a structure id is enough
    load_text(edit('owner = "martin"', 'structure_id = "123456789"'), FILE)


def test_per_needs_owner() -> None:
    text = BASE + '[[mailboxes]]\naddress = "x@cpts.example.fr"\ntype = "PER"\n'
    assert_problem(text, "mailboxes[1].owner", "PER box needs an owner")


@pytest.mark.parametrize("value", ["12345678", "1234567890", "12345678A", "123456789012345"])
def test_bad_structure_id(value: str) -> None:
    text = edit('owner = "martin"', f'owner = "martin"\nstructure_id = "{value}"')
    assert_problem(text, "mailboxes[0].structure_id", "FINESS")


def test_bad_box_type() -> None:
    text = edit('type = "ORG"', 'type = "org"')
    assert_problem(text, "mailboxes[0].type", 'expected one of "PER", "ORG", "APP", "CAB"')


def test_valid_until_before_valid_from() -> None:
    text = BASE + "valid_from = 2026-03-01\nvalid_until = 2026-02-28\n"
    assert_problem(text, "mailboxes[0].coholders[0].valid_until", "2026-02-28 is before valid_from")


def test_one_day_window_is_valid() -> None:
    config = load_text(BASE + "valid_from = 2026-03-01\nvalid_until = 2026-03-01\n", FILE)
    c = config.mailboxes[0].coholders[0]
    assert (c.valid_from, c.valid_until) == (dt.date(2026, 3, 1), dt.date(2026, 3, 1))


@pytest.mark.parametrize("rpps", ["1234", "100012345678", "1000123456a", "１０００１２３４５６７"])
def test_bad_rpps(rpps: str) -> None:
    text = edit('rpps = "10001234567"', f'rpps = "{rpps}"')
    assert_problem(text, "people[0].rpps", "exactly 11 digits")


def test_fingerprints_normalised() -> None:
    upper = ":".join(["AB"] * 32)
    text = edit('id = "dupont"', f'id = "dupont"\ncertificate_fingerprints = ["{upper}"]')
    person = load_text(text, FILE).person("dupont")
    assert person is not None
    assert person.certificate_fingerprints == frozenset({"ab" * 32})


@pytest.mark.parametrize("fingerprint", ["ab" * 31, "zz" * 32, "ab" * 33, "sha256:" + "ab" * 32])
def test_bad_fingerprint(fingerprint: str) -> None:
    text = edit(
        'id = "dupont"',
        f'id = "dupont"\ncertificate_fingerprints = ["{"cd" * 32}", "{fingerprint}"]',
    )
    assert_problem(text, "people[1].certificate_fingerprints[1]", "not a SHA-256 fingerprint")


def test_fingerprint_shared_by_two_people() -> None:
    fp = "ab" * 32
    text = edit('id = "dupont"', f'id = "dupont"\ncertificate_fingerprints = ["{fp}"]')
    text = edit(
        'id = "martin"', f'id = "martin"\ncertificate_fingerprints = ["{fp.upper()}"]', text
    )
    assert_problem(text, "people[1].certificate_fingerprints[0]", "already given to people[0]")


@pytest.mark.parametrize(
    "value",
    [
        "secret",
        # argon2i, not argon2id
        "$argon2i$v=19$m=65536,t=3,p=4$c29tZXNhbHRzb21lc2FsdA$ZGlnZXN0ZGlnZXN0ZGlnZXN0ZGlnZXN0ZGlnZXN0",
        # argon2id with absurd memory cost (16 GiB)
        "$argon2id$v=19$m=16777216,t=3,p=4$c29tZXNhbHRzb21lc2FsdA$ZGlnZXN0ZGlnZXN0ZGlnZXN0ZGlnZXN0ZGlnZXN0",
        "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHRzb21lc2FsdA",
    ],
)
def test_bad_password_hash(value: str) -> None:
    text = edit('id = "dupont"', f"id = \"dupont\"\npassword_hash = '{value}'")
    assert_problem(text, "people[1].password_hash", "not an argon2id PHC string")


# -------------------------------------------------------------------- listeners


def test_listener_without_tls_material() -> None:
    text = edit('certificate = "tls/server.pem"\nkey = "tls/server.key"\n', "")
    problem = assert_problem(text, "listeners[0].tls", "needs TLS material")
    assert "tls.certificate and tls.key are not set" in problem.message


def test_listener_without_tls_key_only() -> None:
    text = edit('key = "tls/server.key"\n', "")
    assert_problem(text, "listeners[0].tls", "tls.key is not set")


@pytest.mark.parametrize("address", ["0.0.0.0:2144", "192.0.2.1:2144", "[::]:2144"])
def test_plaintext_listener_off_loopback(address: str) -> None:
    text = BASE + LISTENER.format(kind="submission", address=address, tls="none")
    assert_problem(text, "listeners[1].tls", "only allowed on a loopback address")


@pytest.mark.parametrize("address", ["127.0.0.1:2144", "127.8.9.10:2144", "[::1]:2144"])
def test_plaintext_listener_on_loopback(address: str) -> None:
    text = BASE + LISTENER.format(kind="submission", address=address, tls="none")
    listener = load_text(text, FILE).listeners[1]
    assert listener.tls is TlsMode.NONE
    assert listener.host == address.rpartition(":")[0].strip("[]")


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("127.0.0.1:70000", "port must be a number from 1 to 65535"),
        ("127.0.0.1:0", "port must be a number from 1 to 65535"),
        ("127.0.0.1:http", "port must be a number"),
        ("127.0.0.1", "expected HOST:PORT"),
        ("::1:143", "IPv6 address goes in brackets"),
        ("[127.0.0.1]:143", "only IPv6"),
        ("localhost:143", "must be an IP address"),
    ],
)
def test_bad_listener_address(address: str, fragment: str) -> None:
    text = BASE + LISTENER.format(kind="imap", address=address, tls="implicit")
    assert_problem(text, "listeners[1].address", fragment)


def test_duplicate_listener_address() -> None:
    text = BASE + LISTENER.format(kind="submission", address="127.0.0.1:2143", tls="implicit")
    assert_problem(text, "listeners[1].address", "duplicate listener address 127.0.0.1:2143")


def test_inbound_requires_client_certificate() -> None:
    text = BASE + LISTENER.format(kind="inbound", address="127.0.0.1:2525", tls="starttls")
    inbound = load_text(text, FILE).listeners[1]
    assert inbound.kind is ListenerKind.INBOUND and inbound.require_client_certificate
    assert not load_text(BASE, FILE).listeners[0].require_client_certificate
    refused = text + "require_client_certificate = false\n"
    assert_problem(refused, "listeners[1].require_client_certificate", "must require")


def test_client_certificate_needs_trust_anchors() -> None:
    text = edit('trust_anchors = ["tls/ca.pem"]\n', "")
    text += LISTENER.format(kind="inbound", address="127.0.0.1:2525", tls="starttls")
    assert_problem(text, "listeners[1].require_client_certificate", "tls.trust_anchors")


def test_ipv6_listener() -> None:
    text = BASE + LISTENER.format(kind="imap", address="[::1]:2993", tls="implicit")
    listener = load_text(text, FILE).listeners[1]
    assert (listener.host, listener.port) == ("::1", 2993)


def test_bad_tls_version() -> None:
    text = edit('key = "tls/server.key"', 'key = "tls/server.key"\nminimum_version = "1.1"')
    assert_problem(text, "tls.minimum_version", '"1.2" or "1.3"')


# ------------------------------------------------------------- storage / routes


@pytest.mark.parametrize(
    "url", ["sqlite:///relay.db", "postgresql://u@h/db", "sqlite+aiosqlite://host/x.db"]
)
def test_bad_storage_url(url: str) -> None:
    assert_problem(BASE + f'[storage]\nurl = "{url}"\n', "storage.url", "sqlite+aiosqlite")


def test_postgres_url_kept() -> None:
    url = "postgresql+asyncpg://relay:pw@db.example.fr/relay"
    assert load_text(BASE + f'[storage]\nurl = "{url}"\n', FILE).storage.url == url


def test_routes() -> None:
    text = BASE + (
        '[[routes]]\ndomain = "*.MSSante.fr"\nmx = true\n'
        '[[routes]]\ndomain = "ch.example.fr"\nhost = "relay.ch.example.fr"\n'
        'peer_dn = "CN=relay.ch.example.fr,O=CH,C=FR"\n'
    )
    wildcard, exact = load_text(text, FILE).routes
    assert (wildcard.domain, wildcard.mx, wildcard.host, wildcard.port) == (
        "*.mssante.fr",
        True,
        "",
        25,
    )
    assert (exact.domain, exact.host, exact.peer_dn) == (
        "ch.example.fr",
        "relay.ch.example.fr",
        "CN=relay.ch.example.fr,O=CH,C=FR",
    )


def test_route_needs_host_unless_mx() -> None:
    assert_problem(BASE + '[[routes]]\ndomain = "x.fr"\n', "routes[0].host", "required key")


def test_route_bad_values() -> None:
    text = BASE + '[[routes]]\ndomain = "*x.fr"\nhost = "h.fr"\nport = 0\npeer_dn = "nonsense"\n'
    found = problems(text)
    assert [p.key for p in found] == ["routes[0].domain", "routes[0].port", "routes[0].peer_dn"]


def test_duplicate_route() -> None:
    text = BASE + '[[routes]]\ndomain = "x.fr"\nmx = true\n' * 2
    assert_problem(text, "routes[1].domain", 'duplicate route for "x.fr"')


def test_local_domains_must_cover_boxes() -> None:
    text = edit(
        'hostname = "mss.example.fr"', 'hostname = "mss.example.fr"\nlocal_domains = ["a.fr"]'
    )
    assert_problem(text, "mailboxes[0].address", '"cpts.example.fr" is not in server.local_domains')


def test_pharmacy_only_on_org() -> None:
    text = BASE + '[[mailboxes]]\naddress = "a@cpts.example.fr"\ntype = "APP"\npharmacy = true\n'
    assert_problem(text, "mailboxes[1].pharmacy", "ORG or CAB")


# ------------------------------------------------------------ many errors at once


def test_all_problems_reported_at_once() -> None:
    text = 'colour = "blue"\n' + BASE
    text = edit('hostname = "mss.example.fr"', "hostname = 1", text)
    text = edit('address = "127.0.0.1:2143"', 'address = "127.0.0.1:99999"', text)
    text = edit('rpps = "10001234567"', 'rpps = "12"', text)
    text = edit('person = "dupont"', 'person = "ghost"', text)
    text += "valid_from = 2026-02-01\nvalid_until = 2026-01-01\n"
    text += "[limits]\nmax_recipients = -1\nmax_widgets = 2\n"
    with pytest.raises(ConfigError) as info:
        load_text(text, FILE)
    keys = [p.key for p in info.value.problems]
    assert sorted(keys) == sorted(
        [
            "colour",
            "server.hostname",
            "listeners[0].address",
            # reported once: not again as "the responsible person has no RPPS"
            "people[0].rpps",
            "mailboxes[0].coholders[0].person",
            "mailboxes[0].coholders[0].valid_until",
            "limits.max_recipients",
            "limits.max_widgets",
        ]
    )
    message = str(info.value)
    assert message.count("\n") == len(keys) - 1
    assert f"{FILE}: limits.max_widgets: unknown key" in message.splitlines()


def test_syntax_error_is_one_problem() -> None:
    problem = assert_problem(BASE + "[[mailboxes]\n", "<syntax>", "line")
    assert "column" in problem.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "absent.toml")
    assert [p.key for p in info.value.problems] == ["<file>"]


# --------------------------------------------------------------- path resolution


def test_paths_resolved_against_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc" / "mss"
    folder.mkdir(parents=True)
    path = folder / "relay.toml"
    path.write_text(
        edit('hostname = "mss.example.fr"', 'hostname = "mss.example.fr"\ndata_dir = "../state"'),
        encoding="utf-8",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load(path)
    root = tmp_path.absolute()
    assert config.server.data_dir == root / "etc" / "state"
    assert config.storage.url == f"sqlite+aiosqlite:///{root / 'etc' / 'state' / 'relay.db'}"
    assert config.storage.key_file == root / "etc" / "state" / "blob.key"
    assert config.tls.certificate == root / "etc" / "mss" / "tls" / "server.pem"
    assert config.tls.trust_anchors == (root / "etc" / "mss" / "tls" / "ca.pem",)

    # a path given relative to the working directory names the same folder
    monkeypatch.chdir(tmp_path)
    relative = load(Path("etc/mss/relay.toml"))
    assert relative.tls.key == root / "etc" / "mss" / "tls" / "server.key"
    assert relative.path == Path("etc/mss/relay.toml")


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    """A certificate rotated by re-pointing a symlink is seen on the next read."""
    (tmp_path / "v1.pem").write_text("one")
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "server.pem").symlink_to(tmp_path / "v1.pem")
    config = load_text(BASE, tmp_path / "relay.toml")
    assert config.tls.certificate == tmp_path.absolute() / "tls" / "server.pem"


def test_default_data_dir_and_relative_sqlite_url() -> None:
    config = load_text(BASE + '[storage]\nurl = "sqlite+aiosqlite:///db/relay.db?mode=rwc"\n', FILE)
    assert config.server.data_dir == Path("/srv/mss/var")
    assert config.storage.url == "sqlite+aiosqlite:////srv/mss/db/relay.db?mode=rwc"
    assert config.storage.key_file == Path("/srv/mss/var/blob.key")
    absolute = load_text(BASE + '[storage]\nurl = "sqlite+aiosqlite:////data/r.db"\n', FILE)
    assert absolute.storage.url == "sqlite+aiosqlite:////data/r.db"


def test_check_files(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "server.pem").write_text("cert")
    (tmp_path / "tls" / "ca.pem").mkdir()  # a folder where a file is expected
    config = load_text(BASE, tmp_path / "relay.toml")
    found = check_files(config)
    assert [(p.key, p.message.split(":")[0]) for p in found] == [
        ("tls.key", "file not found"),
        ("tls.trust_anchors[0]", "not a regular file"),
    ]
    assert all(p.file == str(tmp_path / "relay.toml") for p in found)
    (tmp_path / "tls" / "server.key").write_text("key")
    (tmp_path / "tls" / "ca.pem").rmdir()
    (tmp_path / "tls" / "ca.pem").write_text("ca")
    assert check_files(config) == []


# ------------------------------------------------------------------- robustness

_TOML_VALUES = st.recursive(
    st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
        st.booleans().map(lambda b: "true" if b else "false"),
        st.text(max_size=20).map(json.dumps),
        st.dates().map(dt.date.isoformat),
        st.sampled_from(['"read"', '"ORG"', '"none"', '"127.0.0.1:1"', '"martin"', "1.5"]),
    ),
    lambda inner: st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
    max_leaves=6,
)
_VALUE_LINES = [i for i, line in enumerate(BASE.splitlines()) if " = " in line]


@settings(max_examples=300, deadline=None)
@given(line=st.sampled_from(_VALUE_LINES), value=_TOML_VALUES)
def test_any_value_gives_config_or_config_error(line: int, value: str) -> None:
    """Replacing any value with any TOML value never crashes the loader."""
    lines = BASE.splitlines()
    key = lines[line].split(" = ")[0]
    lines[line] = f"{key} = {value}"
    try:
        load_text("\n".join(lines), FILE)
    except ConfigError as exc:
        assert exc.problems
        assert all(str(p).startswith(f"{FILE}: ") for p in exc.problems)


# --- kind = "http" (relay.web) --------------------------------------------------------


def test_http_listener_endpoints_default_by_address() -> None:
    local = BASE + LISTENER.format(kind="http", address="127.0.0.1:8025", tls="none")
    assert load_text(local, FILE).listeners[1].endpoints == frozenset(HttpEndpoint)
    public = BASE + LISTENER.format(kind="http", address="0.0.0.0:443", tls="implicit")
    assert load_text(public, FILE).listeners[1].endpoints == {HttpEndpoint.AUTOCONFIG}
    chosen = public + 'endpoints = ["autoconfig", "health"]\n'
    assert load_text(chosen, FILE).listeners[1].endpoints == {
        HttpEndpoint.AUTOCONFIG,
        HttpEndpoint.HEALTH,
    }


@pytest.mark.parametrize(
    ("listener", "key", "fragment"),
    [
        (
            LISTENER.format(kind="http", address="127.0.0.1:8025", tls="starttls"),
            "listeners[1].tls",
            "HTTP has no STARTTLS",
        ),
        (
            LISTENER.format(kind="http", address="0.0.0.0:80", tls="none"),
            "listeners[1].tls",
            "only allowed on a loopback",
        ),
        (
            LISTENER.format(kind="http", address="127.0.0.1:8025", tls="none")
            + 'endpoints = ["metrics", "admin"]\n',
            "listeners[1].endpoints[1]",
            '"metrics", "health", "autoconfig"',
        ),
        (
            LISTENER.format(kind="http", address="127.0.0.1:8025", tls="none") + "endpoints = []\n",
            "listeners[1].endpoints",
            "at least one",
        ),
        (
            LISTENER.format(kind="imap", address="127.0.0.1:993", tls="implicit")
            + 'endpoints = ["metrics"]\n',
            "listeners[1].endpoints",
            'only a kind = "http" listener',
        ),
    ],
)
def test_http_listener_problems(listener: str, key: str, fragment: str) -> None:
    assert_problem(BASE + listener, key, fragment)
