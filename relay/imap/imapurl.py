"""IMAP URLs naming a message or a part of one (RFC 5092), as CATENATE uses them
(RFC 4469 §3), pure.

Accepted forms: the absolute ``imap://[user[;AUTH=...]@]host[:port]/...`` (the
authority is ignored: the URL is resolved in the session's own view, with its rights)
and the server-relative ``/mailbox[;UIDVALIDITY=n][/;UID=n][/;SECTION=s][/;PARTIAL=o[.l]]``.
A URL without a UID names no message: CATENATE refuses it.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

_ABSOLUTE = re.compile(r"imap://[^/]*(/.*)\Z", re.IGNORECASE | re.DOTALL)
_MAILBOX = re.compile(r"/([^;]+?)(?:;UIDVALIDITY=([1-9][0-9]{0,9}))?(/;.*)?\Z", re.IGNORECASE)
_PARAM = re.compile(r"/;(UID|SECTION|PARTIAL)=([^/]*)", re.IGNORECASE)
_PARTIAL = re.compile(r"([0-9]{1,10})(?:\.([1-9][0-9]{0,9}))?\Z")
_NUMBER = re.compile(r"[1-9][0-9]{0,9}\Z")
_MAX_NUMBER = 2**32 - 1


@dataclass(frozen=True, slots=True)
class MessageUrl:
    """What an IMAP URL names: a message by UID in a mailbox (name as percent-decoded,
    still in the client's encoding), optionally a section and an octet range."""

    mailbox: str
    uid: int
    uidvalidity: int | None = None
    section: str = ""  # RFC 3501 section-spec without brackets, upper-cased
    partial: tuple[int, int | None] | None = None  # offset, length (None: to the end)


def parse_message_url(url: str) -> MessageUrl | None:
    """The message an IMAP URL names, or None when it names none or is malformed."""
    m = _ABSOLUTE.match(url)
    path = m.group(1) if m else url
    m = _MAILBOX.match(path)
    if m is None:
        return None
    mailbox = urllib.parse.unquote(m.group(1))
    if not mailbox:
        return None
    validity = int(m.group(2)) if m.group(2) else None
    rest = m.group(3) or ""
    values: dict[str, str] = {}
    pos = 0
    order = ("UID", "SECTION", "PARTIAL")
    last = -1
    while pos < len(rest):
        p = _PARAM.match(rest, pos)
        if p is None:
            return None
        name = p.group(1).upper()
        if order.index(name) <= last:
            return None  # RFC 5092 §11: uid, then section, then partial, each once
        last = order.index(name)
        values[name] = urllib.parse.unquote(p.group(2))
        pos = p.end()
    uid = values.get("UID")
    if uid is None or not _NUMBER.match(uid) or int(uid) > _MAX_NUMBER:
        return None
    partial: tuple[int, int | None] | None = None
    if "PARTIAL" in values:
        pm = _PARTIAL.match(values["PARTIAL"])
        if pm is None:
            return None
        partial = (int(pm.group(1)), int(pm.group(2)) if pm.group(2) else None)
    if validity is not None and validity > _MAX_NUMBER:
        return None
    return MessageUrl(mailbox, int(uid), validity, values.get("SECTION", "").upper(), partial)


_SECTION = re.compile(
    r"(?P<parts>[1-9][0-9]{0,9}(?:\.[1-9][0-9]{0,9})*)?"
    r"(?:(?(parts)\.)"
    r"(?P<text>HEADER\.FIELDS(?:\.NOT)? ?\((?P<fields>[^()]*)\)|HEADER|TEXT|MIME))?\Z"
)


def parse_section(section: str) -> tuple[tuple[int, ...], str, tuple[str, ...]] | None:
    """A URL's section (RFC 5092 §3 ``section``, RFC 3501 §6.4.5 section-spec) as
    (part numbers, text kind as `relay.message.imapview.section` takes it, header
    field names); None when it is not one."""
    m = _SECTION.match(section.upper())
    if m is None:
        return None
    parts = tuple(int(p) for p in m.group("parts").split(".")) if m.group("parts") else ()
    text = m.group("text") or ""
    if text == "MIME" and not parts:
        return None
    fields: tuple[str, ...] = ()
    if text.startswith("HEADER.FIELDS"):
        fields = tuple(m.group("fields").split())
        if not fields:
            return None
        text = text.split("(", 1)[0].strip()
    return parts, text, fields
