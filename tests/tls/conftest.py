"""Fixtures for TLS tests: one dev PKI per session, and whitelist samples.

Other suites can copy the `pki` fixture as is: generation takes a few milliseconds
(EC P-256), and the result is read-only for tests.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence

import pytest

from relay.tls.pki import DevPki, generate_dev_pki
from relay.tls.trust_space import NAMESPACE

PKI_HOSTNAME = "mss.localhost"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """The dev PKI (see `relay.tls.pki`), server certificate for `PKI_HOSTNAME`."""
    return generate_dev_pki(tmp_path_factory.mktemp("pki"), PKI_HOSTNAME)


WHITELIST_FIELDS = (
    "Nom",
    "Description",
    "DNCertificatOperateur",
    "ResponsableContact",
    "SupportContact",
    "DateMAJ",
)


def sample_whitelist_xml(
    entries: Sequence[Mapping[str, str]],
    *,
    generated: str | None = "2025-03-01T04:00:00",
    namespace: str = NAMESPACE,
    root_tag: str = "ListeBlanche",
) -> bytes:
    """A `listeblanchemssante.xml`-shaped document, UTF-8 with an XML declaration.

    Each entry maps element names (`WHITELIST_FIELDS`) to text; missing names are
    left out, so an entry without "Nom" makes an invalid file on purpose.
    """
    ns = "{" + namespace + "}" if namespace else ""
    root = ET.Element(f"{ns}{root_tag}")
    if generated is not None:
        ET.SubElement(root, f"{ns}DateDeGeneration").text = generated
    for entry in entries:
        unknown = set(entry) - set(WHITELIST_FIELDS)
        assert not unknown, f"unknown whitelist fields {unknown}"
        domain = ET.SubElement(root, f"{ns}Domaine")
        for tag in WHITELIST_FIELDS:
            if tag in entry:
                ET.SubElement(domain, f"{ns}{tag}").text = entry[tag]
    return bytes(
        ET.tostring(
            root, encoding="utf-8", xml_declaration=True, default_namespace=namespace or None
        )
    )
