"""PeerCertificate extraction and DN comparison."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections import Counter

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.tls.peer import DnSyntaxError, PeerCertificate, dn_equal, parse_dn, peer_from_ssl_object
from relay.tls.pki import INTERMEDIATE_DN, DevPki
from tests.tls.conftest import PKI_HOSTNAME


def _value(attribute: x509.NameAttribute[str | bytes]) -> str:
    assert isinstance(attribute.value, str)
    return attribute.value


def der_of(path_pem: bytes) -> bytes:
    cert = x509.load_pem_x509_certificates(path_pem)[0]
    return cert.public_bytes(serialization.Encoding.DER)


def test_peer_certificate_from_der(pki: DevPki) -> None:
    peer = PeerCertificate.from_der(der_of(pki.server_cert.read_bytes()))
    assert peer.subject == f"CN={PKI_HOSTNAME},O=OPERATEUR DEMO TEST,C=FR"
    assert peer.issuer == INTERMEDIATE_DN
    assert peer.fingerprint_sha256 == pki.fingerprints["server"]
    assert peer.dns_names == (PKI_HOSTNAME, "localhost")
    assert peer.not_before.tzinfo is not None
    assert peer.not_before < dt.datetime.now(dt.UTC) < peer.not_after


def test_peer_certificate_without_san(pki: DevPki) -> None:
    peer = PeerCertificate.from_der(der_of(pki.people["martin"][0].read_bytes()))
    assert peer.dns_names == ()
    assert peer.subject.startswith("CN=810001234567,")
    assert dn_equal(peer.subject, "/C=FR/O=STRUCTURE DEMO TEST/SN=MARTIN/GN=TEST/CN=810001234567")


def test_peer_certificate_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        PeerCertificate.from_der(b"\x30\x03\x02\x01\x00")


def test_peer_from_ssl_object_none() -> None:
    assert peer_from_ssl_object(None) is None


ANS = INTERMEDIATE_DN
ANS_ONELINE = (
    "/C=FR/O=ASIP-SANTE/OU=0002 187512751/OU=IGC-SANTE TEST"
    "/CN=TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS"
)
ANS_DER_ORDER = (
    "C=FR,O=ASIP-SANTE,OU=0002 187512751,OU=IGC-SANTE TEST,"
    "CN=TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS"
)

EQUAL = [
    (ANS, ANS),
    (ANS, ANS_ONELINE),
    (ANS, ANS_DER_ORDER),
    (ANS, ANS.lower()),
    (ANS, ANS.replace(",", ", ")),
    (ANS, ANS.replace("ELEMENTAIRE ORGANISATIONS", "ELEMENTAIRE   ORGANISATIONS ")),
    ("CN=mss.example,O=OP,C=FR", "C = FR, O = OP, CN = mss.example"),  # openssl x509 -subject
    ("CN=mss.example,O=OP,C=FR", "CN=mss.example;O=OP;C=FR"),  # RFC 1779 separators
    ("CN=x,O=OP", "2.5.4.3=x,2.5.4.10=OP"),
    ("CN=x,O=OP", "OID.2.5.4.3=x,o=OP"),
    ("cn=x,sn=DOE,gn=JOHN", "CN=x,2.5.4.4=doe,2.5.4.42=john"),
    ("emailAddress=a@b.fr,CN=x", "/CN=x/E=A@B.FR"),
    ("CN=a\\,b,O=x", "/O=x/CN=a,b"),
    ("CN=a\\,b,O=x", 'CN="a,b",O=x'),
    ("CN=caf\\C3\\A9", "CN=CAFÉ"),
    ("CN=a\\+b", 'CN="a+b"'),
    ("CN=a+O=b", "O=b,CN=a"),  # multi-valued RDN: attributes of one set
    ("CN=x,ST=Paris (75),C=FR", "/C=FR/ST=PARIS (75)/CN=x"),
    ("/C=FR/O=A/B SARL/CN=x", "CN=x,O=A/B SARL,C=FR"),  # "/" inside a one-line value
]

DIFFERENT = [
    (ANS, ANS.replace("ASIP-SANTE", "ASIP SANTE")),  # the rogue CA's look-alike
    (ANS, ANS.replace(",OU=0002 187512751", "")),  # one attribute missing
    (ANS, ANS + ",L=Paris"),  # one attribute more
    ("OU=A,OU=A,CN=x", "OU=A,CN=x"),  # multiset, not set
    ("CN=x,O=OP", "CN=x,OU=OP"),  # same value, other type
    ("CN=mss.example", "CN=mss.example.evil"),
    ("CN=x", "CN=x\\,"),
    ("", ""),  # an empty DN matches nothing
    ("CN=x", ""),
    ("garbage", "garbage"),  # unparsable: fails closed
    ("CN=x,,O=y", "CN=x,,O=y"),
]


@pytest.mark.parametrize(("a", "b"), EQUAL)
def test_dn_equal(a: str, b: str) -> None:
    assert dn_equal(a, b)
    assert dn_equal(b, a)


@pytest.mark.parametrize(("a", "b"), DIFFERENT)
def test_dn_different(a: str, b: str) -> None:
    assert not dn_equal(a, b)
    assert not dn_equal(b, a)


@pytest.mark.parametrize(
    "dn",
    ["", "   ", "CN", "CN=", "CN=a,", "=x", "CN=a\\", 'CN="a', "C!N=x", "CN=a,,O=b",
     "CN=\\FF", "/CN", 'CN="a"b'],
)  # fmt: skip
def test_parse_dn_errors(dn: str) -> None:
    with pytest.raises(DnSyntaxError):
        parse_dn(dn)


def test_parse_dn_counts_repeated_attributes() -> None:
    assert parse_dn(ANS) == Counter(
        {
            ("2.5.4.3", "test ac igc-sante elementaire organisations"): 1,
            ("2.5.4.11", "igc-sante test"): 1,
            ("2.5.4.11", "0002 187512751"): 1,
            ("2.5.4.10", "asip-sante"): 1,
            ("2.5.4.6", "fr"): 1,
        }
    )


_VALUE = st.text(
    alphabet=st.characters(
        categories=("L", "N", "P", "S", "Zs"), exclude_characters="\x00", max_codepoint=0x2FFF
    ),
    min_size=1,
    max_size=20,
).filter(lambda v: v.strip() != "")
_TYPES = st.sampled_from(
    [
        NameOID.COMMON_NAME,
        NameOID.ORGANIZATION_NAME,
        NameOID.ORGANIZATIONAL_UNIT_NAME,
        NameOID.LOCALITY_NAME,
        NameOID.SURNAME,
        NameOID.GIVEN_NAME,
        NameOID.SERIAL_NUMBER,
    ]
)
_NAMES = st.lists(st.tuples(_TYPES, _VALUE), min_size=1, max_size=6).map(
    lambda pairs: x509.Name([x509.NameAttribute(oid, value) for oid, value in pairs])
)
_SHORT = {
    NameOID.COMMON_NAME: "CN",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.LOCALITY_NAME: "L",
    NameOID.SURNAME: "SN",
    NameOID.GIVEN_NAME: "GN",
    NameOID.SERIAL_NUMBER: "serialNumber",
}


@settings(max_examples=300, deadline=None)
@given(_NAMES)
def test_rfc4514_from_cryptography_round_trips(name: x509.Name) -> None:
    """Whatever cryptography escapes, parse_dn reads back the same attributes."""
    expected = Counter((a.oid.dotted_string, " ".join(_value(a).split()).casefold()) for a in name)
    assert parse_dn(name.rfc4514_string()) == expected
    # and the reversed (DER order) string names the same entity
    reversed_rfc = x509.Name(list(reversed(list(name)))).rfc4514_string()
    assert dn_equal(name.rfc4514_string(), reversed_rfc)


@settings(max_examples=300, deadline=None)
@given(_NAMES.filter(lambda n: all("/" not in _value(a) for a in n)))
def test_openssl_oneline_equals_rfc4514(name: x509.Name) -> None:
    oneline = "".join(f"/{_SHORT[a.oid]}={_value(a)}" for a in name)
    assert dn_equal(name.rfc4514_string(), oneline)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60))
def test_parse_dn_any_text_parses_or_raises_dn_syntax_error(text: str) -> None:
    with contextlib.suppress(DnSyntaxError):
        parse_dn(text)
