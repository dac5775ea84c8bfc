"""The two shipped config files load, and the demo holds exactly what its comments say."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from relay.config import load, summary
from relay.config.model import ALL_RIGHTS, BoxType, HttpEndpoint, ListenerKind, Right, TlsMode
from relay.identity.passwords import verify_password

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
DEMO = CONFIG_DIR / "demo.toml"
EXAMPLE = CONFIG_DIR / "relay.example.toml"
REPO = CONFIG_DIR.parent


def test_example_loads() -> None:
    config = load(EXAMPLE)
    types = {m.type for m in config.mailboxes}
    assert {BoxType.ORG, BoxType.CAB, BoxType.APP} <= types
    assert any(r.domain.startswith("*.") for r in config.routes)
    cab = next(m for m in config.mailboxes if m.type is BoxType.CAB)
    assert any(c.valid_from and c.valid_until for c in cab.coholders)
    # every mail listener of the example uses TLS; the HTTP one (metrics) is loopback
    mail = [x for x in config.listeners if x.kind is not ListenerKind.HTTP]
    assert mail and all(x.tls is not TlsMode.NONE for x in mail)
    (http,) = [x for x in config.listeners if x.kind is ListenerKind.HTTP]
    assert http.host == "127.0.0.1" and http.endpoints == frozenset(HttpEndpoint)


def test_example_documents_every_key() -> None:
    """Each key the loader reads appears in the example's text (as a key or in comments)."""
    text = EXAMPLE.read_text(encoding="utf-8")
    keys = [
        "hostname", "data_dir", "local_domains", "url", "key_file", "certificate", "key",
        "trust_anchors", "crl_files", "minimum_version", "crl_grace_seconds", "kind",
        "address", "tls", "require_client_certificate", "endpoints", "id", "display_name", "rpps",
        "profession", "login", "password_hash", "certificate_fingerprints", "type", "owner",
        "structure_id", "responsible", "liste_rouge", "seen", "pharmacy", "person",
        "rights", "valid_from", "valid_until", "domain", "host", "port", "peer_dn", "mx",
        "upstream", "imap", "submission", "password_file", "folders",
        "poll_interval_seconds", "idle",
    ]  # fmt: skip
    from relay.config.model import Limits

    keys += list(Limits.__dataclass_fields__)
    assert [k for k in keys if f"{k} " not in text] == []


def test_demo_paths() -> None:
    config = load(DEMO)
    assert config.server.hostname == "localhost"
    assert config.server.data_dir == REPO / "var" / "demo"
    assert config.tls.certificate == REPO / "var" / "pki" / "server.pem"
    assert config.tls.key == REPO / "var" / "pki" / "server.key"
    assert config.tls.trust_anchors == (REPO / "var" / "pki" / "ca-bundle.pem",)
    assert config.tls.crl_files == (REPO / "var" / "pki" / "crl.pem",)
    assert config.storage.url == f"sqlite+aiosqlite:///{REPO / 'var' / 'demo' / 'relay.db'}"


def test_demo_listeners() -> None:
    config = load(DEMO)
    got = {(x.kind, x.host, x.port, x.tls) for x in config.listeners}
    assert got == {
        (ListenerKind.SUBMISSION, "127.0.0.1", 2587, TlsMode.STARTTLS),
        (ListenerKind.SUBMISSION, "127.0.0.1", 2465, TlsMode.IMPLICIT),
        (ListenerKind.INBOUND, "127.0.0.1", 2525, TlsMode.STARTTLS),
        (ListenerKind.IMAP, "127.0.0.1", 2143, TlsMode.STARTTLS),
        (ListenerKind.IMAP, "127.0.0.1", 2993, TlsMode.IMPLICIT),
        (ListenerKind.HTTP, "127.0.0.1", 2080, TlsMode.NONE),
    }
    (http,) = [x for x in config.listeners if x.kind is ListenerKind.HTTP]
    assert http.endpoints == frozenset(HttpEndpoint)  # loopback: metrics, health, autoconfig
    assert config.routes == ()


def test_demo_people_and_boxes() -> None:
    config = load(DEMO)
    assert [p.id for p in config.people] == ["martin", "dupont", "leroy"]
    martin, dupont, leroy = config.people
    assert martin.rpps is not None and len(martin.rpps) == 11
    assert dupont.rpps is None
    assert leroy.rpps is not None and len(leroy.rpps) == 11

    assert [m.address for m in config.mailboxes] == [
        "secretariat@cpts-demo.mssante.fr",
        "martin@cpts-demo.mssante.fr",
    ]
    shared, personal = config.mailboxes
    assert (shared.type, shared.owner, shared.responsible) == (BoxType.ORG, "martin", "martin")
    assert [(c.person, c.rights, c.valid_from, c.valid_until) for c in shared.coholders] == [
        ("dupont", frozenset({Right.READ, Right.FLAG, Right.SEND}), None, None),
        ("leroy", frozenset({Right.READ}), dt.date(2026, 1, 1), dt.date(2030, 12, 31)),
    ]
    assert (personal.type, personal.owner, personal.coholders) == (BoxType.PER, "martin", ())
    assert config.server.local_domains == frozenset({"cpts-demo.mssante.fr"})


def test_demo_rights_by_day() -> None:
    shared = load(DEMO).mailboxes[0]
    assert shared.rights_of("martin", dt.date(2020, 1, 1)) == ALL_RIGHTS
    assert shared.rights_of("leroy", dt.date(2025, 12, 31)) == frozenset()
    assert shared.rights_of("leroy", dt.date(2026, 1, 1)) == {Right.READ}
    assert shared.rights_of("leroy", dt.date(2030, 12, 31)) == {Right.READ}
    assert shared.rights_of("leroy", dt.date(2031, 1, 1)) == frozenset()


def test_demo_hashes_verify_against_documented_passwords() -> None:
    config = load(DEMO)
    text = DEMO.read_text(encoding="utf-8")
    for person in config.people:
        documented = re.search(rf"^#\s+{person.id}\s+password:\s+(\S+)$", text, re.MULTILINE)
        assert documented is not None, person.id
        password = documented.group(1)
        assert password == f"{person.id}-demo"
        assert person.password_hash is not None
        assert password not in person.password_hash
        assert verify_password(person.password_hash, password)
    martin = config.person("martin")
    assert martin is not None and martin.password_hash is not None
    assert not verify_password(martin.password_hash, "dupont-demo")
    assert text.count("DEMO ONLY") >= 4


def test_demo_summary() -> None:
    text = summary(load(DEMO), today=dt.date(2031, 6, 1))
    assert "secretariat@cpts-demo.mssante.fr  ORG" in text
    assert "[expired]" in text
