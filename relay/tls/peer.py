"""What we know about a TLS peer's certificate, and DN comparison.

Pure: works from DER bytes or `cryptography` objects. Only `peer_from_ssl_object`
touches an `ssl` object, to fetch the DER of an established connection's peer.
Chain, validity and revocation were already checked by OpenSSL in the handshake
(`relay.tls.context`); this module answers "who is it" once the handshake is done.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes

if TYPE_CHECKING:
    import ssl


class DnSyntaxError(ValueError):
    """A distinguished name string that neither RFC 4514 nor OpenSSL's "/C=FR/O=..."
    form can read."""


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The identity carried by a peer's end-entity certificate."""

    subject: str  # RFC 4514 (most specific RDN first)
    issuer: str  # RFC 4514
    fingerprint_sha256: str  # lower-case hex SHA-256 of the DER encoding
    serial_number: int
    not_before: dt.datetime  # aware, UTC
    not_after: dt.datetime  # aware, UTC
    dns_names: tuple[str, ...]  # subjectAltName dNSName entries, as written

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> PeerCertificate:
        """Extract the identity of a parsed certificate."""
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            dns_names = tuple(san.value.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            dns_names = ()
        return cls(
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
            serial_number=cert.serial_number,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            dns_names=dns_names,
        )

    @classmethod
    def from_der(cls, der: bytes) -> PeerCertificate:
        """Parse a DER certificate; ValueError if it is not one."""
        return cls.from_certificate(x509.load_der_x509_certificate(der))


def peer_from_ssl_object(ssl_obj: ssl.SSLObject | ssl.SSLSocket | None) -> PeerCertificate | None:
    """The verified peer certificate of a TLS connection, or None (no TLS, no
    certificate sent, or handshake not done).

    With asyncio, pass `transport.get_extra_info("ssl_object")`.
    """
    if ssl_obj is None:
        return None
    der = ssl_obj.getpeercert(binary_form=True)
    if not der:
        return None
    return PeerCertificate.from_der(der)


# Attribute type names, lower-cased, to their OID. RFC 4514 §3 names plus those
# OpenSSL prints (SN, GN, serialNumber, emailAddress...), so a DN written either way
# compares equal to the same DN written the other way.
_ATTRIBUTE_OIDS: dict[str, str] = {
    "cn": "2.5.4.3",
    "commonname": "2.5.4.3",
    "sn": "2.5.4.4",
    "surname": "2.5.4.4",
    "serialnumber": "2.5.4.5",
    "c": "2.5.4.6",
    "countryname": "2.5.4.6",
    "l": "2.5.4.7",
    "localityname": "2.5.4.7",
    "st": "2.5.4.8",
    "s": "2.5.4.8",
    "stateorprovincename": "2.5.4.8",
    "street": "2.5.4.9",
    "streetaddress": "2.5.4.9",
    "o": "2.5.4.10",
    "organizationname": "2.5.4.10",
    "ou": "2.5.4.11",
    "organizationalunitname": "2.5.4.11",
    "title": "2.5.4.12",
    "gn": "2.5.4.42",
    "givenname": "2.5.4.42",
    "initials": "2.5.4.43",
    "pseudonym": "2.5.4.65",
    "organizationidentifier": "2.5.4.97",
    "dc": "0.9.2342.19200300.100.1.25",
    "domaincomponent": "0.9.2342.19200300.100.1.25",
    "uid": "0.9.2342.19200300.100.1.1",
    "userid": "0.9.2342.19200300.100.1.1",
    "emailaddress": "1.2.840.113549.1.9.1",
    "email": "1.2.840.113549.1.9.1",
    "e": "1.2.840.113549.1.9.1",
}

_OID_RE = re.compile(r"^(?:oid\.)?([0-2](?:\.\d+)+)$")
_KEY_RE = re.compile(r"^[a-z][a-z0-9-]*$")
# OpenSSL one-line form: "/C=FR/O=ASIP-SANTE/CN=x". A "/" inside a value is not
# escaped there, so only a "/" followed by "type=" starts a new attribute.
_ONELINE_SPLIT = re.compile(r"/(?=\s*[A-Za-z][A-Za-z0-9.-]*\s*=)")
_HEX = "0123456789abcdefABCDEF"


def _attribute_type(raw: str, dn: str) -> str:
    key = raw.strip().lower()
    if key in _ATTRIBUTE_OIDS:
        return _ATTRIBUTE_OIDS[key]
    m = _OID_RE.match(key)
    if m:
        return m.group(1)
    if _KEY_RE.match(key):
        return key  # unknown name: compared by name
    raise DnSyntaxError(f"bad attribute type {raw.strip()!r} in DN {dn!r}")


def _normalise_value(value: str) -> str:
    # RFC 4517 §4.2.3 caseIgnoreMatch with RFC 4518 §2.6.1 insignificant space
    # handling: case-fold, drop leading/trailing spaces, fold inner runs to one.
    return " ".join(value.split()).casefold()


def _is_hexpair(dn: str, i: int) -> bool:
    pair = dn[i + 1 : i + 3]
    return dn[i : i + 1] == "\\" and len(pair) == 2 and all(h in _HEX for h in pair)


def _split_rfc4514(dn: str) -> list[tuple[str, str]]:
    """(type, unescaped value) pairs of an RFC 4514 string (also RFC 2253 quoted
    values, ';' separators and OpenSSL's "C = FR, O = X" spacing). Surrounding
    spaces are kept here and folded away by `_normalise_value`."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(dn)
    while i < n:
        eq = dn.find("=", i)
        if eq < 0:
            raise DnSyntaxError(f"attribute without '=' in DN {dn!r}")
        key = dn[i:eq]
        i = eq + 1
        while i < n and dn[i] == " ":
            i += 1
        value: list[str] = []
        if i < n and dn[i] == '"':  # RFC 2253 §4 legacy quoted value
            i += 1
            while i < n and dn[i] != '"':
                if dn[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(dn[i])
                i += 1
            if i >= n:
                raise DnSyntaxError(f"unterminated quoted value in DN {dn!r}")
            i += 1
        else:
            while i < n and dn[i] not in ",;+":
                c = dn[i]
                if c == "\\":  # RFC 4514 §2.4: \special or \hexpair
                    if _is_hexpair(dn, i):
                        # a run of hex pairs is the UTF-8 encoding of characters
                        raw = bytearray()
                        while _is_hexpair(dn, i):
                            raw.append(int(dn[i + 1 : i + 3], 16))
                            i += 3
                        try:
                            value.append(raw.decode("utf-8"))
                        except UnicodeDecodeError:
                            raise DnSyntaxError(f"escaped bytes not UTF-8 in DN {dn!r}") from None
                        continue
                    if i + 1 >= n:
                        raise DnSyntaxError(f"dangling escape in DN {dn!r}")
                    value.append(dn[i + 1])
                    i += 2
                    continue
                value.append(c)
                i += 1
        while i < n and dn[i] == " ":
            i += 1
        if i < n:
            if dn[i] not in ",;+":
                raise DnSyntaxError(f"unexpected {dn[i]!r} after a value in DN {dn!r}")
            i += 1  # '+' (multi-valued RDN) is just one more attribute of the set
            while i < n and dn[i] == " ":
                i += 1
            if i >= n:
                raise DnSyntaxError(f"DN ends with a separator: {dn!r}")
        pairs.append((key, "".join(value)))
    return pairs


def parse_dn(dn: str) -> Counter[tuple[str, str]]:
    """The attributes of a DN as a multiset of (attribute OID, normalised value).

    Accepts RFC 4514 strings ("CN=x,O=y,C=FR", any order), RFC 2253 quoting, and
    OpenSSL's one-line form ("/C=FR/O=y/CN=x"). Raises DnSyntaxError otherwise, and
    for an empty DN.
    """
    # Only leading space is dropped here: a trailing one may be escaped ("CN=a\\ ").
    text = dn.lstrip()
    if not text.strip():
        raise DnSyntaxError("empty DN")
    if text.startswith("/"):
        pairs = []
        for part in _ONELINE_SPLIT.split(text[1:]):
            key, sep, value = part.partition("=")
            if not sep:
                raise DnSyntaxError(f"attribute without '=' in DN {dn!r}")
            pairs.append((key, value))
    else:
        pairs = _split_rfc4514(text)
    attributes: Counter[tuple[str, str]] = Counter()
    for key, value in pairs:
        normalised = _normalise_value(value)
        if not normalised:
            raise DnSyntaxError(f"empty value for {key.strip()!r} in DN {dn!r}")
        attributes[(_attribute_type(key, dn), normalised)] += 1
    return attributes


def dn_equal(a: str, b: str) -> bool:
    """Whether two DN strings name the same entity.

    Compared as multisets of (attribute type, value): the order of RDNs is ignored
    because the same certificate subject is written most-specific-first in RFC 4514
    and in DER order by OpenSSL's one-line form, and whitelists and configs are
    written by hand in either. Values match case-insensitively after whitespace
    folding, the X.520 caseIgnoreMatch rule that CN, O, OU, C... carry (RFC 4517
    §4.2.3, RFC 4518). Ignoring order could equate two DNs differing only by RDN
    order; within one CA's namespace (the chain is verified before this check) that
    does not happen. A DN that does not parse, or is empty, equals nothing: the
    check fails closed.
    """
    try:
        return parse_dn(a) == parse_dn(b)
    except DnSyntaxError:
        return False
