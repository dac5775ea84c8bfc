"""Pure message analysis: metadata computed once at acceptance, IMAP views served from it.

- `analysis.analyse(raw) -> MessageMeta` (JSON round trip with to_json / from_json);
- `imapview`: ENVELOPE, BODY/BODYSTRUCTURE, BODY[section], BINARY, SEARCH TEXT/BODY;
- `received.received_header(...)`: the RFC 5321 trace header.
"""

from relay.message.analysis import (
    BodyPart,
    Envelope,
    MessageMeta,
    MetaFormatError,
    SearchHeaders,
    analyse,
)
from relay.message.imapview import (
    SectionSpecError,
    binary_section,
    bodystructure,
    envelope,
    find_part,
    part_exists,
    partial,
    search_header,
    search_text,
    section,
)
from relay.message.received import ReceivedHeaderError, received_header

__all__ = [
    "BodyPart",
    "Envelope",
    "MessageMeta",
    "MetaFormatError",
    "ReceivedHeaderError",
    "SearchHeaders",
    "SectionSpecError",
    "analyse",
    "binary_section",
    "bodystructure",
    "envelope",
    "find_part",
    "part_exists",
    "partial",
    "received_header",
    "search_header",
    "search_text",
    "section",
]
