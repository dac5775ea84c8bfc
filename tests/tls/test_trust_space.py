"""Parsing the ANS whitelist `listeblanchemssante.xml`."""

from __future__ import annotations

import contextlib
import datetime as dt
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.tls.trust_space import (
    NAMESPACE,
    TrustSpaceError,
    ascii_domain,
    parse_trust_space,
)
from tests.tls.conftest import sample_whitelist_xml

PARIS = dt.timezone(dt.timedelta(hours=1))  # winter time, for the expected values

THREE = [
    {
        "Nom": "cpts-a.mssante.fr",
        "Description": "CPTS A",
        "DNCertificatOperateur": "CN=mss.cpts-a.fr,OU=12345678900012,O=OPERATEUR A,ST=Paris (75),C=FR",  # noqa: E501
        "ResponsableContact": "responsable@cpts-a.fr",
        "SupportContact": "support@cpts-a.fr",
        "DateMAJ": "2024-11-05T10:30:00",
    },
    {
        "Nom": "Santé-Armor.MSSante.fr",
        "Description": "Centre de santé des Côtes-d'Armor",
        "DNCertificatOperateur": "CN=relais.sante-armor.fr,O=OPÉRATEUR B,C=FR",
        "ResponsableContact": "direction@sante-armor.fr",
        "SupportContact": "+33 2 96 00 00 00",
        "DateMAJ": "2025-02-01",
    },
    {
        "Nom": "pharma.example.fr",
        "DNCertificatOperateur": "/C=FR/O=OPERATEUR C/CN=mx.pharma.example.fr",
    },
]


def test_three_domains() -> None:
    space = parse_trust_space(sample_whitelist_xml(THREE))
    assert space.generated == dt.datetime(2025, 3, 1, 4, 0, tzinfo=PARIS)
    assert [d.name for d in space.domains] == [
        "cpts-a.mssante.fr",
        "Santé-Armor.MSSante.fr",
        "pharma.example.fr",
    ]
    a, b, c = space.domains
    assert a.ascii_name == "cpts-a.mssante.fr"
    assert a.description == "CPTS A"
    assert a.operator_dn is not None and a.operator_dn.startswith("CN=mss.cpts-a.fr,")
    assert a.responsible_contact == "responsable@cpts-a.fr"
    assert a.support_contact == "support@cpts-a.fr"
    assert a.updated == dt.datetime(2024, 11, 5, 10, 30, tzinfo=PARIS)
    assert b.ascii_name == "xn--sant-armor-e7a.mssante.fr"
    assert b.description == "Centre de santé des Côtes-d'Armor"
    assert b.updated == dt.datetime(2025, 2, 1, tzinfo=PARIS)
    assert (c.description, c.responsible_contact, c.support_contact, c.updated) == (
        None,
        None,
        None,
        None,
    )


def test_lookup() -> None:
    space = parse_trust_space(sample_whitelist_xml(THREE))
    for query in (
        "santé-armor.mssante.fr",
        "SANTÉ-ARMOR.MSSANTE.FR",
        "xn--sant-armor-e7a.mssante.fr",
        "santé-armor.mssante.fr.",
    ):
        found = space.lookup(query)
        assert found is not None and found.name == "Santé-Armor.MSSante.fr", query
    assert space.lookup("sub.cpts-a.mssante.fr") is None  # no subdomain matching
    assert space.lookup("mssante.fr") is None
    assert space.lookup("") is None
    assert space.lookup("bad domain") is None


def test_matches_certificate() -> None:
    space = parse_trust_space(sample_whitelist_xml(THREE))
    a = space.lookup("cpts-a.mssante.fr")
    assert a is not None
    assert a.matches_certificate(
        "CN=mss.cpts-a.fr,OU=12345678900012,O=OPERATEUR A,ST=Paris (75),C=FR"
    )
    assert a.matches_certificate(
        "/C=FR/ST=Paris (75)/O=OPERATEUR A/OU=12345678900012/CN=mss.cpts-a.fr"
    )
    assert not a.matches_certificate("CN=mss.cpts-a.fr,O=OPERATEUR A,C=FR")
    c = space.lookup("pharma.example.fr")
    assert c is not None and c.matches_certificate("CN=mx.pharma.example.fr,O=OPERATEUR C,C=FR")
    no_dn = parse_trust_space(sample_whitelist_xml([{"Nom": "x.fr"}])).domains[0]
    assert not no_dn.matches_certificate("CN=x.fr")


def test_generation_date_optional_and_formats() -> None:
    assert parse_trust_space(sample_whitelist_xml(THREE, generated=None)).generated is None
    utc = parse_trust_space(sample_whitelist_xml([], generated="2025-07-01T12:00:00Z"))
    assert utc.generated == dt.datetime(2025, 7, 1, 12, tzinfo=dt.UTC)
    french = parse_trust_space(sample_whitelist_xml([], generated="01/07/2025 14:00:00"))
    assert french.generated == dt.datetime(2025, 7, 1, 12, tzinfo=dt.UTC)  # CEST
    assert french.domains == ()
    with pytest.raises(TrustSpaceError, match=r"DateDeGeneration.*'yesterday'"):
        parse_trust_space(sample_whitelist_xml([], generated="yesterday"))
    with pytest.raises(TrustSpaceError, match=re.escape("DateMAJ of 'x.fr'")):
        parse_trust_space(sample_whitelist_xml([{"Nom": "x.fr", "DateMAJ": "13/13/2025"}]))


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<ListeBlanche xmlns="https://listeblanche.mssante.fr/schema">
 <Domaine><Nom>&lol3;</Nom></Domaine>
</ListeBlanche>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ListeBlanche xmlns="https://listeblanche.mssante.fr/schema">
 <Domaine><Nom>&xxe;</Nom></Domaine>
</ListeBlanche>"""


@pytest.mark.parametrize(
    "document",
    [
        BILLION_LAUGHS,
        EXTERNAL_ENTITY,
        # the byte scan does not see UTF-16; the expat handler does
        BILLION_LAUGHS.replace(b'<?xml version="1.0"?>', b'<?xml version="1.0" encoding="UTF-16"?>')
        .decode()
        .encode("utf-16"),
    ],
    ids=["billion-laughs", "external-entity", "utf-16"],
)
def test_doctype_refused(document: bytes) -> None:
    with pytest.raises(TrustSpaceError, match="DOCTYPE"):
        parse_trust_space(document)


def test_doctype_refused_by_parser_even_if_byte_scan_missed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defence in depth: with the byte scan disabled, expat's handler still refuses."""
    import relay.xmlsafe as module

    monkeypatch.setattr(module, "_FORBIDDEN_MARKUP", ())
    with pytest.raises(TrustSpaceError, match="refused: it contains a DOCTYPE"):
        parse_trust_space(BILLION_LAUGHS)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"<ListeBlanche", "not well-formed"),
        (b"", "not well-formed"),
        (b"\xff\xfe\x00garbage", "not well-formed"),
        (sample_whitelist_xml(THREE, namespace="https://example.org/other"), "namespace"),
        (sample_whitelist_xml(THREE, namespace=""), r"found \(none\)"),
        (sample_whitelist_xml([{"Description": "no name"}]), "Domaine #1 has no Nom"),
        (sample_whitelist_xml([{"Nom": "  "}]), "Domaine #1 has no Nom"),
        (sample_whitelist_xml([{"Nom": "a.fr"}, {"Nom": "A.FR"}]), "listed twice"),
        (sample_whitelist_xml([{"Nom": "bad domain.fr"}]), "not a valid host name"),
        (sample_whitelist_xml([{"Nom": "a..fr"}]), "IDNA|host name"),
        (sample_whitelist_xml([{"Nom": "x" * 64 + ".fr"}]), "IDNA|host name"),
    ],
)
def test_malformed(document: bytes, message: str) -> None:
    with pytest.raises(TrustSpaceError, match=message):
        parse_trust_space(document)


def test_size_bound() -> None:
    document = sample_whitelist_xml(THREE)
    assert parse_trust_space(document, max_bytes=len(document)).domains
    with pytest.raises(TrustSpaceError, match="too large"):
        parse_trust_space(document, max_bytes=len(document) - 1)


def test_unknown_elements_ignored() -> None:
    document = (
        f'<ListeBlanche xmlns="{NAMESPACE}" xmlns:ds="http://www.w3.org/2000/09/xmldsig#">'
        "<DateDeGeneration>2025-03-01T04:00:00</DateDeGeneration>"
        "<Domaine><Nom>a.fr</Nom><Futur>x</Futur></Domaine>"
        "<ds:Signature><ds:SignedInfo/></ds:Signature>"
        "</ListeBlanche>"
    ).encode()
    space = parse_trust_space(document)
    assert [d.name for d in space.domains] == ["a.fr"]


def test_ascii_domain() -> None:
    # reference values: RFC 3492 / well-known examples
    assert ascii_domain("Bücher.Example.") == "xn--bcher-kva.example"
    assert ascii_domain("münchen.de") == "xn--mnchen-3ya.de"
    assert ascii_domain("Santé.FR.") == "xn--sant-epa.fr"
    assert ascii_domain("xn--sant-epa.fr") == "xn--sant-epa.fr"
    for bad in ("", ".", "-a.fr", "a-.fr", "a_b.fr"):
        with pytest.raises(TrustSpaceError):
            ascii_domain(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_trust_space_error(data: bytes) -> None:
    with contextlib.suppress(TrustSpaceError):
        parse_trust_space(data)


_LABELS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzéèàçôü0123456789", min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_LABELS, min_size=2, max_size=3).map(".".join), max_size=5, unique=True))
def test_generated_whitelists_round_trip(names: list[str]) -> None:
    try:
        expected = {ascii_domain(n) for n in names}
    except TrustSpaceError:
        return
    if len(expected) != len(names):
        return  # names equal after IDNA mapping are duplicates: tested elsewhere
    space = parse_trust_space(sample_whitelist_xml([{"Nom": n} for n in names]))
    assert [d.name for d in space.domains] == names
    for n in names:
        found = space.lookup(n.upper())
        assert found is not None and found.name == n
