"""Client autoconfiguration decisions and XML (pure). The Thunderbird answers are read
the way config-v1.1 defines them (`read_config_v11`), the Autodiscover ones by the
Outlook 2006a response schema's element names."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.config import Config, load_text
from relay.web.autoconfig import (
    AUTODISCOVER_REQUEST_NS,
    AUTODISCOVER_RESPONSE_NS,
    OUTLOOK_RESPONSE_NS,
    AutodiscoverError,
    autodiscover_error_xml,
    autodiscover_xml,
    parse_autodiscover_request,
    settings_for,
    thunderbird_xml,
)
from relay.web.dns import dns_records
from relay.xmlsafe import parse_strict

DOMAIN = "cpts-valdeloue.mssante.fr"
CONFIG = f"""
[server]
hostname = "mss.cpts-valdeloue.fr"

[tls]
certificate = "server.pem"
key = "server.key"
trust_anchors = ["ca.pem"]

[[listeners]]
kind = "submission"
address = "0.0.0.0:587"
tls = "starttls"

[[listeners]]
kind = "submission"
address = "0.0.0.0:465"
tls = "implicit"
require_client_certificate = true

[[listeners]]
kind = "imap"
address = "0.0.0.0:143"
tls = "starttls"

[[listeners]]
kind = "imap"
address = "[::]:993"
tls = "implicit"

[[listeners]]
kind = "imap"
address = "127.0.0.1:1143"
tls = "none"

[[listeners]]
kind = "inbound"
address = "0.0.0.0:25"
tls = "starttls"

[[listeners]]
kind = "http"
address = "127.0.0.1:8025"
tls = "none"

[[people]]
id = "durand"
rpps = "10003456789"
login = "h.durand"

[[people]]
id = "petit"
rpps = "10007890123"

[[mailboxes]]
address = "helene.durand@{DOMAIN}"
type = "PER"
owner = "durand"

[[mailboxes]]
address = "anne.petit@{DOMAIN}"
type = "PER"
owner = "petit"
liste_rouge = true

[[mailboxes]]
address = "secretariat@{DOMAIN}"
type = "ORG"
owner = "durand"
responsible = "durand"
"""


@pytest.fixture(scope="module")
def config() -> Config:
    return load_text(CONFIG, Path("/etc/mss-relay/relay.toml"))


# --- config-v1.1, as Thunderbird's reader defines it ---------------------------------

SOCKET_TYPES = {"plain", "SSL", "STARTTLS"}
AUTHENTICATIONS = {
    "password-cleartext", "plain", "password-encrypted", "secure", "GSSAPI", "NTLM",
    "TLS-client-cert", "OAuth2", "none",
}  # fmt: skip


@dataclass(frozen=True)
class Server:
    direction: str  # incoming | outgoing
    type: str
    hostname: str
    port: int
    socket_type: str
    username: str
    authentication: tuple[str, ...]


def read_config_v11(data: bytes) -> tuple[str, list[str], list[Server]]:
    """(provider id, domains, servers in document order); fails on anything the
    format does not allow."""
    root = parse_strict(data, max_bytes=1 << 20)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    (provider,) = root.findall("emailProvider")
    provider_id = provider.get("id")
    assert provider_id
    domains = [d.text or "" for d in provider.findall("domain")]
    assert domains and all(domains)
    assert provider.findtext("displayName") and provider.findtext("displayShortName")
    servers: list[Server] = []
    for element in provider:
        if element.tag not in ("incomingServer", "outgoingServer"):
            assert element.tag in ("domain", "displayName", "displayShortName", "documentation")
            continue
        kind = element.get("type") or ""
        if element.tag == "incomingServer":
            assert kind in ("imap", "pop3")
        else:
            assert kind == "smtp"
        port = int(element.findtext("port") or "")
        assert 1 <= port <= 65535
        socket_type = element.findtext("socketType") or ""
        assert socket_type in SOCKET_TYPES
        auth = tuple(a.text or "" for a in element.findall("authentication"))
        assert auth and set(auth) <= AUTHENTICATIONS
        hostname = element.findtext("hostname") or ""
        username = element.findtext("username")
        assert hostname and username
        servers.append(
            Server(
                "incoming" if element.tag == "incomingServer" else "outgoing",
                kind,
                hostname,
                port,
                socket_type,
                username,
                auth,
            )
        )
    assert any(s.direction == "incoming" for s in servers)
    assert any(s.direction == "outgoing" for s in servers)
    return provider_id, domains, servers


def test_personal_published_box_gets_its_owners_login(config: Config) -> None:
    settings = settings_for(config, f"Helene.Durand@{DOMAIN.upper()}")
    assert settings is not None
    provider, domains, servers = read_config_v11(thunderbird_xml(settings))
    assert provider == DOMAIN and domains == [DOMAIN]
    host = "mss.cpts-valdeloue.fr"
    assert servers == [
        # RFC 8314: implicit TLS first; plain text (127.0.0.1:1143) never offered
        Server("incoming", "imap", host, 993, "SSL", "h.durand", ("password-cleartext",)),
        Server("incoming", "imap", host, 143, "STARTTLS", "h.durand", ("password-cleartext",)),
        # password listeners before the one requiring a client certificate
        Server("outgoing", "smtp", host, 587, "STARTTLS", "h.durand", ("password-cleartext",)),
        Server("outgoing", "smtp", host, 465, "SSL", "h.durand", ("TLS-client-cert",)),
    ]


def test_other_addresses_get_one_answer_that_reveals_nobody(config: Config) -> None:
    """A shared box, a liste-rouge box and an address nobody holds: byte for byte the
    same answer, the address itself as user name (the person*box form)."""
    answers = set()
    for address in (
        f"secretariat@{DOMAIN}",
        f"anne.petit@{DOMAIN}",
        f"nobody@{DOMAIN}",
        f"h.durand*secretariat@{DOMAIN}",
    ):
        settings = settings_for(config, address)
        assert settings is not None and settings.login is None
        answers.add(thunderbird_xml(settings))
    (answer,) = answers
    _, _, servers = read_config_v11(answer)
    assert {s.username for s in servers} == {"%EMAILADDRESS%"}
    assert b"durand" not in answer and b"petit" not in answer


@pytest.mark.parametrize(
    "address",
    [
        "someone@other.example",
        "no-at-sign",
        "@" + DOMAIN,
        "a b@" + DOMAIN,
        "x\n@" + DOMAIN,
        "x" * 400 + "@" + DOMAIN,
        '"<script>"@' + DOMAIN,
    ],
)
def test_not_ours_or_not_an_address_gets_nothing(config: Config, address: str) -> None:
    assert settings_for(config, address) is None


def test_without_an_address_the_host_name_says_which_domain(config: Config) -> None:
    by_host = settings_for(config, None, host=f"autoconfig.{DOMAIN}:443")
    assert by_host is not None and by_host.domain == DOMAIN and by_host.login is None
    # one local domain: it is the answer whatever the host
    assert settings_for(config, None, host="127.0.0.1:8025") == by_host


# --- Autodiscover (POX) ---------------------------------------------------------------


def request(address: str, schema: str = OUTLOOK_RESPONSE_NS) -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?>'
        f'<Autodiscover xmlns="{AUTODISCOVER_REQUEST_NS}"><Request>'
        f"<EMailAddress>{address}</EMailAddress>"
        f"<AcceptableResponseSchema>{schema}</AcceptableResponseSchema>"
        f"</Request></Autodiscover>"
    ).encode()


def protocols(data: bytes) -> list[dict[str, str]]:
    root = parse_strict(data, max_bytes=1 << 20)
    assert root.tag == f"{{{AUTODISCOVER_RESPONSE_NS}}}Autodiscover"
    o = f"{{{OUTLOOK_RESPONSE_NS}}}"
    account = root.find(f"{o}Response/{o}Account")
    assert account is not None
    assert account.findtext(f"{o}AccountType") == "email"
    assert account.findtext(f"{o}Action") == "settings"
    return [
        {child.tag.removeprefix(o): child.text or "" for child in p}
        for p in account.findall(f"{o}Protocol")
    ]


def test_autodiscover_for_a_person(config: Config) -> None:
    address = parse_autodiscover_request(request(f"helene.durand@{DOMAIN}"))
    settings = settings_for(config, address)
    assert settings is not None
    got = protocols(autodiscover_xml(settings, address))
    assert [(p["Type"], p["Port"], p["Encryption"], p["LoginName"]) for p in got] == [
        ("IMAP", "993", "SSL", "h.durand"),
        # Outlook cannot bring a certificate from Autodiscover: the password listener
        ("SMTP", "587", "TLS", "h.durand"),
    ]
    assert all(p["Server"] == "mss.cpts-valdeloue.fr" and p["AuthRequired"] == "on" for p in got)


def test_autodiscover_for_anyone_else_names_the_address(config: Config) -> None:
    address = parse_autodiscover_request(request(f"nobody@{DOMAIN}"))
    settings = settings_for(config, address)
    assert settings is not None
    assert {p["LoginName"] for p in protocols(autodiscover_xml(settings, address))} == {
        f"nobody@{DOMAIN}"
    }


BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY l "lol"><!ENTITY l2 "&l;&l;&l;&l;">]>'
    b"<Autodiscover><Request><EMailAddress>&l2;</EMailAddress></Request></Autodiscover>"
)


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (BILLION_LAUGHS, 600, "DOCTYPE"),
        (b"<Autodiscover><Request>", 600, "not well-formed"),
        (b"<Autodiscover><Request/></Autodiscover>", 600, "not an Outlook"),
        (request(""), 600, "no EMailAddress"),
        (b"x" * 20000, 600, "larger than"),
        (
            request(
                "a@b",
                "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006",
            ),
            601,
            "not supported",
        ),
    ],
)
def test_bad_autodiscover_requests(body: bytes, code: int, words: str) -> None:
    with pytest.raises(AutodiscoverError) as info:
        parse_autodiscover_request(body)
    assert info.value.code == code and words in info.value.message
    xml = autodiscover_error_xml(info.value, dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
    root = parse_strict(xml, max_bytes=1 << 20)
    ns = f"{{{AUTODISCOVER_RESPONSE_NS}}}"
    assert root.findtext(f"{ns}Response/{ns}Error/{ns}ErrorCode") == str(code)


# --- mss-relay dns-records ------------------------------------------------------------


def test_dns_records(config: Config) -> None:
    text = dns_records(config)
    d = DOMAIN + "."
    host = "mss.cpts-valdeloue.fr."
    lines = [
        line.split(";")[0].split()
        for line in text.splitlines()
        if line and not line.startswith(";")
    ]
    records = {(r[0], r[3]): r[4:] for r in lines}
    assert records[(f"_imaps._tcp.{d}", "SRV")] == ["0", "1", "993", host]
    assert records[(f"_imap._tcp.{d}", "SRV")] == ["10", "1", "143", host]
    assert records[(f"_submission._tcp.{d}", "SRV")] == ["10", "1", "587", host]
    # 465 needs a client certificate: not for SRV-discovering clients
    assert records[(f"_submissions._tcp.{d}", "SRV")] == ["0", "0", "0", "."]
    assert records[(f"_pop3s._tcp.{d}", "SRV")] == ["0", "0", "0", "."]
    assert records[(f"autoconfig.{d}", "CNAME")] == [host]
    assert records[(f"autodiscover.{d}", "CNAME")] == [host]
    assert records[(f"_autodiscover._tcp.{d}", "SRV")] == ["0", "0", "443", host]
    assert "not published (plain text): imap 127.0.0.1:1143" in text
