"""Client autoconfiguration: what a mail client needs from an address alone. Pure.

Two formats, one decision (`settings_for`):

- Thunderbird autoconfig, ``config-v1.1.xml`` (Mozilla's ISPDB format, written up as
  draft-ietf-mailmaint-autoconfig): ``clientConfig/emailProvider`` with one
  ``incomingServer`` (IMAP) and one ``outgoingServer`` (SMTP submission) per listener,
  preferred first;
- Microsoft Autodiscover "POX" (plain old XML, the Outlook 2006a schemas): the client
  POSTs ``Autodiscover/Request/EMailAddress`` and gets ``Account/Protocol`` entries
  for IMAP and SMTP.

What is published: the host is ``[server] hostname``; the ports and TLS modes are those
of the IMAP and submission listeners (RFC 8314 §3.3: implicit TLS first, then
STARTTLS; plain-text listeners are never offered). Listeners that require a client
certificate are offered with certificate authentication, after the password ones.

The login (who exists, and what leaks): a client asks about an address, anonymously.
The answer names the login only for an address the national directory publishes
anyway, a personal (PER) box with ``liste_rouge = false``: its owner's own login, and
the shared boxes they co-hold appear under ``Partages/`` once logged in. Every other
address of our domains (a shared box, whose co-holders cannot be told apart from an
anonymous request; a liste-rouge box; an address nobody holds) gets the same
domain-wide answer with the address itself as the user name. That answer is exactly
right for the ``person*box`` login form (``dupont*secretariat@cpts.example`` is itself
a valid address), which is how a client that cannot browse shared folders reaches one
box; the user types that form. So the responses tell no more than the directory
does: which published personal addresses exist and their owners' logins. Addresses of
other domains get 404 (not ours to describe).
"""

from __future__ import annotations

import datetime as dt
import enum
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass

from relay.config.model import BoxType, Config, ListenerConfig, ListenerKind, TlsMode
from relay.xmlsafe import XmlError, parse_strict

__all__ = [
    "AUTODISCOVER_REQUEST_NS",
    "AUTODISCOVER_RESPONSE_NS",
    "MAX_AUTODISCOVER_REQUEST_BYTES",
    "OUTLOOK_RESPONSE_NS",
    "AutodiscoverError",
    "ClientSettings",
    "MailService",
    "autodiscover_error_xml",
    "autodiscover_xml",
    "parse_autodiscover_request",
    "services",
    "settings_for",
    "thunderbird_xml",
]

AUTODISCOVER_REQUEST_NS = (
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
)
AUTODISCOVER_RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_RESPONSE_NS = (
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
)
# A request is one address and one schema name: a few hundred bytes.
MAX_AUTODISCOVER_REQUEST_BYTES = 16 * 1024
MAX_ADDRESS_CHARS = 320  # RFC 5321 §4.5.3.1.1 and .2: 64 + 1 + 255
# Thunderbird substitutes the address the user typed (config-v1.1 placeholders).
EMAILADDRESS = "%EMAILADDRESS%"


class Security(enum.StrEnum):
    IMPLICIT = "implicit"  # RFC 8314: TLS from the first byte
    STARTTLS = "starttls"  # RFC 3207 / RFC 9051 §6.2.1


@dataclass(frozen=True, slots=True)
class MailService:
    """One listener as a client connects to it."""

    protocol: str  # "imap" | "smtp"
    host: str
    port: int
    security: Security
    client_certificate: bool


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """What to tell a client about one address."""

    domain: str
    address: str | None  # as asked (lower-cased); None when none was given
    login: str | None  # the person's own login; None: the address is the user name
    services: tuple[MailService, ...]  # preferred first, per protocol


class AutodiscoverError(ValueError):
    """A request we cannot answer with settings: Autodiscover error 600 (invalid
    request) or 601 (schema not supported)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _preference(lc: ListenerConfig) -> tuple[bool, bool, int]:
    # Password listeners before certificate ones; implicit TLS before STARTTLS
    # (RFC 8314 §3.3, §5.1); then by port for a stable order.
    return (lc.require_client_certificate, lc.tls is not TlsMode.IMPLICIT, lc.port)


def services(config: Config) -> tuple[MailService, ...]:
    """The IMAP and submission listeners a client may use, preferred first."""
    out: list[MailService] = []
    for kind, protocol in ((ListenerKind.IMAP, "imap"), (ListenerKind.SUBMISSION, "smtp")):
        usable = [lc for lc in config.listeners if lc.kind is kind and lc.tls is not TlsMode.NONE]
        for lc in sorted(usable, key=_preference):
            out.append(
                MailService(
                    protocol=protocol,
                    host=config.server.hostname,
                    port=lc.port,
                    security=Security(lc.tls.value),
                    client_certificate=lc.require_client_certificate,
                )
            )
    return tuple(out)


def _split(address: str) -> tuple[str, str] | None:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or len(address) > MAX_ADDRESS_CHARS:
        return None
    if any(ch.isspace() or ord(ch) < 0x20 or ch in '<>"\\' for ch in address):
        return None
    return local, domain.lower().rstrip(".")


def _published_owner_login(config: Config, address: str) -> str | None:
    box = config.mailbox(address)
    if box is None or box.type is not BoxType.PER or box.liste_rouge or box.owner is None:
        return None
    person = config.person(box.owner)
    return person.login if person is not None else None


def settings_for(
    config: Config, address: str | None, *, host: str | None = None
) -> ClientSettings | None:
    """The settings for `address` (None when the client gave none: Thunderbird may
    omit it), or None when it is not an address of one of our domains.

    Without an address the domain comes from the ``autoconfig.<domain>`` host name
    the client asked, else from the only local domain."""
    domains = config.server.local_domains
    if address is not None:
        parts = _split(address.strip())
        if parts is None or parts[1] not in domains:
            return None
        local, domain = parts
        asked = f"{local}@{domain}".lower()
        return ClientSettings(
            domain=domain,
            address=asked,
            login=_published_owner_login(config, asked),
            services=services(config),
        )
    name = (host or "").lower().partition(":")[0].rstrip(".")
    for prefix in ("autoconfig.", "autodiscover."):
        if name.startswith(prefix) and name[len(prefix) :] in domains:
            return ClientSettings(name[len(prefix) :], None, None, services(config))
    if name in domains:
        return ClientSettings(name, None, None, services(config))
    if len(domains) == 1:
        return ClientSettings(next(iter(domains)), None, None, services(config))
    return None


# --- Thunderbird config-v1.1 ----------------------------------------------------------


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = text
    return element


def _xml(root: ET.Element) -> bytes:
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data + b"\n"


def thunderbird_xml(s: ClientSettings) -> bytes:
    """``clientConfig`` version 1.1 for `s`."""
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=s.domain)
    _text(provider, "domain", s.domain)
    _text(provider, "displayName", f"MSSanté {s.domain}")
    _text(provider, "displayShortName", s.domain)
    username = s.login if s.login is not None else EMAILADDRESS
    for svc in s.services:
        tag, kind = (
            ("incomingServer", "imap") if svc.protocol == "imap" else ("outgoingServer", "smtp")
        )
        server = ET.SubElement(provider, tag, type=kind)
        _text(server, "hostname", svc.host)
        _text(server, "port", str(svc.port))
        _text(server, "socketType", "SSL" if svc.security is Security.IMPLICIT else "STARTTLS")
        _text(server, "username", username)
        _text(
            server,
            "authentication",
            "TLS-client-cert" if svc.client_certificate else "password-cleartext",
        )
    return _xml(root)


# --- Microsoft Autodiscover (POX) -----------------------------------------------------


def parse_autodiscover_request(data: bytes) -> str:
    """The ``EMailAddress`` of an Outlook Autodiscover request.

    Raises `AutodiscoverError` 600 for anything that is not such a request (DOCTYPE
    and entities included: the body is parsed by `relay.xmlsafe`), 601 when the
    client wants another response schema than Outlook's (e.g. mobilesync)."""
    try:
        root = parse_strict(data, max_bytes=MAX_AUTODISCOVER_REQUEST_BYTES)
    except XmlError as exc:
        raise AutodiscoverError(600, f"Invalid Request: {exc}") from None
    ns = f"{{{AUTODISCOVER_REQUEST_NS}}}"
    if root.tag != f"{ns}Autodiscover":
        raise AutodiscoverError(600, "Invalid Request: not an Outlook Autodiscover request")
    request = root.find(f"{ns}Request")
    address = request.findtext(f"{ns}EMailAddress") if request is not None else None
    schema = request.findtext(f"{ns}AcceptableResponseSchema") if request is not None else None
    if not address or not address.strip():
        raise AutodiscoverError(600, "Invalid Request: no EMailAddress")
    if schema is not None and schema.strip() != OUTLOOK_RESPONSE_NS:
        raise AutodiscoverError(601, "Requested schema version not supported")
    return address.strip()


def autodiscover_xml(s: ClientSettings, address: str) -> bytes:
    """The Outlook 2006a response: the preferred IMAP and SMTP services."""
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_RESPONSE_NS)
    response = ET.SubElement(root, "Response", xmlns=OUTLOOK_RESPONSE_NS)
    account = ET.SubElement(response, "Account")
    _text(account, "AccountType", "email")
    _text(account, "Action", "settings")
    login = s.login if s.login is not None else address
    for protocol in _first_per_protocol(s.services):
        p = ET.SubElement(account, "Protocol")
        _text(p, "Type", protocol.protocol.upper())
        _text(p, "Server", protocol.host)
        _text(p, "Port", str(protocol.port))
        _text(p, "DomainRequired", "off")
        _text(p, "LoginName", login)
        _text(p, "SPA", "off")
        _text(p, "SSL", "on")
        # Outlook: "SSL" = implicit TLS, "TLS" = STARTTLS.
        _text(p, "Encryption", "SSL" if protocol.security is Security.IMPLICIT else "TLS")
        _text(p, "AuthRequired", "on")
    return _xml(root)


def _first_per_protocol(found: Iterable[MailService]) -> list[MailService]:
    # Outlook reads one Protocol per Type; it cannot use certificate authentication
    # from Autodiscover, so the preferred password listener is offered.
    chosen: dict[str, MailService] = {}
    for svc in found:
        if svc.client_certificate:
            continue
        chosen.setdefault(svc.protocol, svc)
    return list(chosen.values())


def autodiscover_error_xml(error: AutodiscoverError, now: dt.datetime) -> bytes:
    """An Autodiscover ``Error`` response (the generic 2006 response schema)."""
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_RESPONSE_NS)
    response = ET.SubElement(root, "Response")
    err = ET.SubElement(
        response, "Error", Time=now.strftime("%H:%M:%S.%f")[:-3], Id=str(error.code)
    )
    _text(err, "ErrorCode", str(error.code))
    _text(err, "Message", error.message)
    ET.SubElement(err, "DebugData")
    return _xml(root)
