"""relay.xmlsafe: hostile XML is refused before any expansion (pure)."""

from __future__ import annotations

import pytest

import relay.xmlsafe as xmlsafe
from relay.xmlsafe import UnsafeXml, XmlError, parse_strict

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">]>
<a>&lol2;</a>"""
EXTERNAL = b"""<?xml version="1.0"?>
<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>"""


def test_namespaced_tags_in_clark_notation() -> None:
    root = parse_strict(b'<r xmlns="urn:x"><c a="1">t</c></r>', max_bytes=100)
    assert root.tag == "{urn:x}r"
    assert root.findtext("{urn:x}c") == "t"


@pytest.mark.parametrize(
    "document", [BILLION_LAUGHS, EXTERNAL, BILLION_LAUGHS.decode().encode("utf-16")]
)
def test_doctype_and_entities_refused(document: bytes) -> None:
    with pytest.raises(UnsafeXml):
        parse_strict(document, max_bytes=10_000)


@pytest.mark.parametrize("document", [BILLION_LAUGHS, EXTERNAL])
def test_expat_handlers_refuse_even_without_the_byte_scan(
    document: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(xmlsafe, "_FORBIDDEN_MARKUP", ())
    with pytest.raises(UnsafeXml, match="DOCTYPE"):
        parse_strict(document, max_bytes=10_000)


def test_size_bound_and_malformed() -> None:
    with pytest.raises(UnsafeXml, match="larger than 10 bytes"):
        parse_strict(b"<a>" + b"x" * 20 + b"</a>", max_bytes=10)
    with pytest.raises(XmlError, match="not well-formed"):
        parse_strict(b"<a><b></a>", max_bytes=100)
    with pytest.raises(XmlError):
        parse_strict(b"", max_bytes=100)
