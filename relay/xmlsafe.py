"""Parsing XML that comes from outside: no DOCTYPE, no entities, bounded size. Pure.

Used for the ANS trust-space whitelist and the Autodiscover requests mail clients
POST. Any DOCTYPE is refused (no internal entities, hence no "billion laughs"
expansion; no external entities, hence no file or URL reads). This is done twice: a
byte scan before parsing, and expat handlers that abort on a DOCTYPE or an entity
declaration whatever the encoding. defusedxml does the same with the same expat hooks,
but its last release is 0.7.1 (March 2021), so a dependency buys nothing here.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pyexpat import XML_PARAM_ENTITY_PARSING_NEVER as _PARAM_ENTITY_NEVER
from pyexpat import ExpatError, ParserCreate
from typing import NoReturn

__all__ = ["UnsafeXml", "XmlError", "parse_strict"]


class XmlError(ValueError):
    """Not well-formed XML; the message says where."""


class UnsafeXml(XmlError):
    """A DOCTYPE, an entity declaration, an external entity, or too many bytes."""


class _Refused(Exception):
    pass


def _refuse(what: str) -> NoReturn:
    raise _Refused(what)


_FORBIDDEN_MARKUP = tuple(
    marker.encode(encoding)
    for marker in ("<!DOCTYPE", "<!ENTITY")
    for encoding in ("utf-8", "utf-16-le", "utf-16-be")
)


def parse_strict(data: bytes, *, max_bytes: int) -> ET.Element:
    """The document element of `data`, with namespaced tags as ``{uri}local``.

    Raises `UnsafeXml` for a DOCTYPE, an entity or more than `max_bytes`, `XmlError`
    for anything not well-formed."""
    if len(data) > max_bytes:
        raise UnsafeXml(f"larger than {max_bytes} bytes")
    for marker in _FORBIDDEN_MARKUP:
        if marker in data:
            raise UnsafeXml("it contains a DOCTYPE or ENTITY declaration")
    builder = ET.TreeBuilder()
    parser = ParserCreate(namespace_separator="}")
    parser.SetParamEntityParsing(_PARAM_ENTITY_NEVER)

    def qname(name: str) -> str:
        # expat gives "uri}local" for namespaced names; ElementTree wants "{uri}local"
        return "{" + name if "}" in name else name

    def start(name: str, attrs: dict[str, str]) -> None:
        builder.start(qname(name), {qname(k): v for k, v in attrs.items()})

    def end(name: str) -> None:
        builder.end(qname(name))

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = lambda *_: _refuse("DOCTYPE")
    parser.EntityDeclHandler = lambda *_: _refuse("ENTITY declaration")
    parser.ExternalEntityRefHandler = lambda *_: _refuse("external entity")
    try:
        parser.Parse(data, True)
    except _Refused as exc:
        raise UnsafeXml(f"it contains a {exc}") from None
    except ExpatError as exc:
        raise XmlError(f"not well-formed XML: {exc}") from None
    return builder.close()
