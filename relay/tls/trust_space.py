"""The MSSanté trust space: the ANS operator whitelist `listeblanchemssante.xml`.

Pure: bytes in, `TrustSpace` out. The file lists, per operator domain (`Domaine`),
its name (`Nom`, possibly non-ASCII), the subject DN of the operator's certificate
(`DNCertificatOperateur`) and contacts (MSSANTE.md). An operator relays only to and
from listed domains and checks the peer's certificate subject against the listed DN.

Hostile input: the file comes over the network. It is parsed by `relay.xmlsafe`
(any DOCTYPE or entity refused, so no "billion laughs" and no external reads), and
its size is bounded.

Not done here: verifying the XML signature of the signed list.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
import zoneinfo
from dataclasses import dataclass, field

from relay.tls.peer import dn_equal
from relay.xmlsafe import UnsafeXml, XmlError, parse_strict

NAMESPACE = "https://listeblanche.mssante.fr/schema"
# The national list holds a few thousand domains (well under 2 MiB); this leaves
# room for growth while bounding memory.
MAX_WHITELIST_BYTES = 32 * 1024 * 1024

# Dates without an offset are read as French legal time [?]: the ANS is in Paris.
_PARIS = zoneinfo.ZoneInfo("Europe/Paris")
_FRENCH_FORMATS = ("%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%d/%m/%Y")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class TrustSpaceError(ValueError):
    """The whitelist cannot be used; the message says why (for the operator's log)."""


@dataclass(frozen=True, slots=True)
class TrustedDomain:
    """One `Domaine` of the whitelist."""

    name: str  # `Nom` as written in the file (may be non-ASCII)
    ascii_name: str  # IDNA (punycode) form, lower case, no trailing dot
    description: str | None
    operator_dn: str | None  # `DNCertificatOperateur`: the peer's certificate subject
    responsible_contact: str | None
    support_contact: str | None
    updated: dt.datetime | None  # `DateMAJ`, aware

    def matches_certificate(self, subject_dn: str) -> bool:
        """Whether a peer certificate subject is the one listed for this domain
        (`listed_dn_matches`). A domain without a listed DN matches nothing."""
        return listed_dn_matches(self.operator_dn, subject_dn)


def has_listed_dn(listed_dn: str | None) -> bool:
    """Whether a trust-space entry names an operator certificate DN at all."""
    return bool(listed_dn and listed_dn.strip())


def listed_dn_matches(listed_dn: str | None, subject_dn: str) -> bool:
    """Whether `subject_dn` (a peer certificate's subject) is the DN a trust-space
    entry lists (`relay.tls.peer.dn_equal`).

    Fails closed: an entry without `DNCertificatOperateur` (absent, empty or blank)
    matches no certificate at all. Otherwise any certificate the IGC-Santé chain
    vouches for, whoever its operator, would be accepted for that domain's senders.
    """
    if listed_dn is None or not has_listed_dn(listed_dn):
        return False
    return dn_equal(listed_dn, subject_dn)


@dataclass(frozen=True, slots=True)
class TrustSpace:
    """The parsed whitelist."""

    generated: dt.datetime | None  # `DateDeGeneration`, aware
    domains: tuple[TrustedDomain, ...]
    _index: dict[str, TrustedDomain] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {d.ascii_name: d for d in self.domains})

    def lookup(self, domain: str) -> TrustedDomain | None:
        """The listed entry for `domain` (Unicode or punycode, any case), exact match
        only: a listed domain does not vouch for its subdomains."""
        try:
            key = ascii_domain(domain)
        except TrustSpaceError:
            return None
        return self._index.get(key)


def ascii_domain(name: str) -> str:
    """IDNA ASCII form of a domain name, lower case, without trailing dot.

    Uses Python's built-in IDNA 2003 codec (RFC 3490): the `idna` package (IDNA
    2008) is not a dependency. The two differ only on rare characters (ß, ς,
    joiners) that French operator domains do not use [?].
    """
    text = name.strip().rstrip(".")
    if not text:
        raise TrustSpaceError("empty domain name")
    try:
        ascii_form = text.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise TrustSpaceError(f"domain name {name!r} is not a valid IDNA name: {exc}") from None
    labels = ascii_form.split(".")
    if len(ascii_form) > 253 or not all(_LABEL.match(label) for label in labels):
        raise TrustSpaceError(f"domain name {name!r} is not a valid host name")
    return ascii_form


def _parse_xml(data: bytes) -> ET.Element:
    """ElementTree from expat, with DOCTYPE and entities refused (`relay.xmlsafe`)."""
    try:
        return parse_strict(data, max_bytes=len(data))
    except UnsafeXml as exc:
        raise TrustSpaceError(f"whitelist refused: {exc}") from None
    except XmlError as exc:
        raise TrustSpaceError(f"whitelist is {exc}") from None


def _parse_datetime(text: str, what: str) -> dt.datetime:
    value: dt.datetime | None = None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        for fmt in _FRENCH_FORMATS:
            try:
                value = dt.datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
    if value is None:
        raise TrustSpaceError(f"{what}: unreadable date {text!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=_PARIS)
    return value


def _text(parent: ET.Element, tag: str) -> str | None:
    child = parent.find(f"{{{NAMESPACE}}}{tag}")
    if child is None:
        return None
    text = "".join(child.itertext()).strip()
    return text or None


def parse_trust_space(data: bytes, *, max_bytes: int = MAX_WHITELIST_BYTES) -> TrustSpace:
    """Parse `listeblanchemssante.xml`.

    Raises TrustSpaceError for oversized input, a DOCTYPE, malformed XML, a root
    outside the ANS namespace, a `Domaine` without `Nom`, an invalid or duplicated
    domain name, or an unreadable date.
    """
    if len(data) > max_bytes:
        raise TrustSpaceError(f"whitelist too large: {len(data)} bytes > {max_bytes}")
    root = _parse_xml(data)
    if not root.tag.startswith(f"{{{NAMESPACE}}}"):
        found = root.tag.partition("}")[0].lstrip("{") if "}" in root.tag else "(none)"
        raise TrustSpaceError(
            f"whitelist root element is not in namespace {NAMESPACE} (found {found})"
        )
    # DateDeGeneration: wherever it sits (directly under the root in known files).
    generated_element = root.find(f".//{{{NAMESPACE}}}DateDeGeneration")
    generated_text = (
        "".join(generated_element.itertext()).strip() if generated_element is not None else ""
    )
    generated = _parse_datetime(generated_text, "DateDeGeneration") if generated_text else None
    domains: list[TrustedDomain] = []
    seen: dict[str, str] = {}
    for position, element in enumerate(root.iter(f"{{{NAMESPACE}}}Domaine"), start=1):
        name = _text(element, "Nom")
        if name is None:
            raise TrustSpaceError(f"Domaine #{position} has no Nom")
        ascii_name = ascii_domain(name)
        if ascii_name in seen:
            raise TrustSpaceError(
                f"Domaine #{position} {name!r} is listed twice (also as {seen[ascii_name]!r})"
            )
        seen[ascii_name] = name
        updated_text = _text(element, "DateMAJ")
        domains.append(
            TrustedDomain(
                name=name,
                ascii_name=ascii_name,
                description=_text(element, "Description"),
                operator_dn=_text(element, "DNCertificatOperateur"),
                responsible_contact=_text(element, "ResponsableContact"),
                support_contact=_text(element, "SupportContact"),
                updated=(
                    _parse_datetime(updated_text, f"DateMAJ of {name!r}") if updated_text else None
                ),
            )
        )
    return TrustSpace(generated=generated, domains=tuple(domains))
