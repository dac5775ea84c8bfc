"""Message metadata computed once when a message is accepted.

`analyse(raw)` scans a message's bytes a single time and returns a `MessageMeta`: the
size, the raw header values an IMAP ENVELOPE needs, the MIME body-structure tree with
byte offsets of every part, and a few decoded header values for SEARCH. The store keeps
it as JSON (`to_json` / `from_json`) beside the encrypted message, so the IMAP server
answers FETCH ENVELOPE / BODYSTRUCTURE / RFC822.SIZE and SEARCH on headers without
decrypting or re-parsing anything (`relay.message.imapview` does the serialising).

The scanner is our own rather than `email.parser`: it is several times faster on the
acceptance path and keeps exact byte offsets, which BODY[section] needs. It is lenient
by design: any bytes give a `MessageMeta` (malformed mail is still stored and served),
CRLF and bare-LF line ends are both accepted, and nesting depth and part count are
bounded so hostile input cannot blow up the tree.
"""

from __future__ import annotations

import binascii
import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parsedate_tz
from typing import Any, cast

# Bounds for hostile input (Dovecot uses similar ones): nested multipart/message levels
# beyond MAX_DEPTH are served as leaves; splitting stops after MAX_PARTS parts in all.
MAX_DEPTH = 32
MAX_PARTS = 2000

# Version of the JSON layout written by MessageMeta.to_json.
JSON_VERSION = 1

Params = tuple[tuple[str, str], ...]


class MetaFormatError(ValueError):
    """Stored metadata JSON does not have the layout `MessageMeta.to_json` writes."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """Raw (unfolded, RFC 2047 not decoded) header values for an IMAP ENVELOPE.

    None when the header is absent. RFC 3501 §7.4.2 wants the header text as it is;
    clients decode encoded words themselves.
    """

    date: str | None = None
    subject: str | None = None
    from_: str | None = None
    sender: str | None = None
    reply_to: str | None = None
    to: str | None = None
    cc: str | None = None
    bcc: str | None = None
    in_reply_to: str | None = None
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class BodyPart:
    """One MIME entity (RFC 2045) and where it lies in the raw message.

    Types, subtypes, parameter names and the transfer encoding are lower-cased;
    parameter values are kept as written (RFC 2231 `name*` parameters stay raw).
    `header_start`..`body_start` is the entity's header including the blank line,
    `body_start`..`end` its body (for a part of a multipart, without the CRLF that
    belongs to the next boundary, RFC 2046 §5.1.1). A multipart has `parts`; a
    message/rfc822 part has `message`, the root entity of the encapsulated message,
    and `envelope`, that message's envelope.
    """

    type: str
    subtype: str
    params: Params
    header_start: int
    body_start: int
    end: int
    id: str | None = None
    description: str | None = None
    encoding: str = "7bit"
    disposition: str | None = None
    disposition_params: Params = ()
    language: tuple[str, ...] = ()
    location: str | None = None
    md5: str | None = None
    lines: int = 0
    parts: tuple[BodyPart, ...] = ()
    envelope: Envelope | None = None
    message: BodyPart | None = None

    @property
    def size(self) -> int:
        """Body size in octets, as RFC 3501 body-fld-octets counts it."""
        return self.end - self.body_start

    @property
    def is_multipart(self) -> bool:
        """Whether this is a multipart entity that was split into parts."""
        return bool(self.parts)

    def param(self, name: str) -> str | None:
        """First Content-Type parameter called `name` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.params:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class SearchHeaders:
    """Decoded header values (RFC 2047 words decoded, unfolded) for IMAP SEARCH.

    Empty strings when a header is absent. `sent` is the Date header's calendar date
    in its own time zone, as SENTBEFORE/SENTON/SENTSINCE compare it (RFC 3501 §6.4.4).
    """

    from_: str = ""
    to: str = ""
    cc: str = ""
    bcc: str = ""
    subject: str = ""
    sent: dt.date | None = None


@dataclass(frozen=True, slots=True)
class MessageMeta:
    """Everything the IMAP server serves about a message without re-reading it.

    `message_id` is the Message-ID without angle brackets, comments or whitespace
    (for the audit trail), None when absent. `references` is the References header
    unfolded, None when absent (THREAD=REFERENCES, RFC 5256 §6.4; messages stored
    before it was kept have None).
    """

    size: int
    header_end: int
    envelope: Envelope
    body: BodyPart
    search: SearchHeaders
    message_id: str | None = None
    references: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A compact JSON-able dict; `from_json` gives back an equal MessageMeta."""
        d: dict[str, Any] = {
            "v": JSON_VERSION,
            "z": self.size,
            "h": self.header_end,
            "b": _part_to_json(self.body),
        }
        env = _envelope_to_json(self.envelope)
        if env:
            d["e"] = env
        if self.message_id is not None:
            d["m"] = self.message_id
        if self.references is not None:
            d["r"] = self.references
        srch: dict[str, str] = {}
        for key, attr, raw in _search_keys(self.envelope):
            value = getattr(self.search, attr)
            # Most headers carry no encoded word: store only what differs from raw.
            if value != (raw or ""):
                srch[key] = value
        if self.search.sent is not None:
            srch["sent"] = self.search.sent.isoformat()
        if srch:
            d["s"] = srch
        return d

    @classmethod
    def from_json(cls, d: Any) -> MessageMeta:
        """Rebuild a MessageMeta from `to_json` output; MetaFormatError if malformed."""
        try:
            if not isinstance(d, dict) or d.get("v") != JSON_VERSION:
                raise MetaFormatError("unknown metadata version")
            envelope = _envelope_from_json(d.get("e", {}))
            srch = d.get("s", {})
            if not isinstance(srch, dict):
                raise MetaFormatError("bad search headers")
            values: dict[str, Any] = {}
            for key, attr, raw in _search_keys(envelope):
                values[attr] = _str(srch.get(key, raw or ""))
            sent = srch.get("sent")
            values["sent"] = None if sent is None else dt.date.fromisoformat(_str(sent))
            mid = d.get("m")
            refs = d.get("r")
            return cls(
                size=_int(d["z"]),
                header_end=_int(d["h"]),
                envelope=envelope,
                body=_part_from_json(d["b"], 0),
                search=SearchHeaders(**values),
                message_id=None if mid is None else _str(mid),
                references=None if refs is None else _str(refs),
            )
        except MetaFormatError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, RecursionError) as exc:
            raise MetaFormatError(f"malformed metadata: {type(exc).__name__}") from None


def headers_from_json(d: Any) -> tuple[Envelope, str | None, str | None]:
    """(envelope, Message-ID, References) from `MessageMeta.to_json` output, without
    rebuilding the body tree (what SORT and THREAD need); MetaFormatError if malformed."""
    try:
        if not isinstance(d, dict) or d.get("v") != JSON_VERSION:
            raise MetaFormatError("unknown metadata version")
        mid, refs = d.get("m"), d.get("r")
        return (
            _envelope_from_json(d.get("e", {})),
            None if mid is None else _str(mid),
            None if refs is None else _str(refs),
        )
    except MetaFormatError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise MetaFormatError(f"malformed metadata: {type(exc).__name__}") from None


# --------------------------------------------------------------------------- analyse


def analyse(raw: bytes | bytearray) -> MessageMeta:
    """Scan `raw` once and return its metadata. Never raises on any input bytes; a
    bytearray gives the same result as its bytes (tests/message/test_properties.py),
    so a big message is analysed without a copy."""
    budget = _Budget(MAX_PARTS)
    # The scanners only read (find, count, regex, slices): a bytearray serves as is.
    body, headers = _entity(cast(bytes, raw), 0, len(raw), False, 0, budget)
    envelope = _envelope(headers)
    return MessageMeta(
        size=len(raw),
        header_end=body.body_start,
        envelope=envelope,
        body=body,
        search=_search_headers(envelope, headers.get(ALL_SUBJECTS)),
        message_id=normalise_message_id(envelope.message_id),
        references=headers.get(_REFERENCES),
    )


class _Budget:
    __slots__ = ("parts",)

    def __init__(self, parts: int) -> None:
        self.parts = parts


# RFC 5322 §2.2: a field starts at a line beginning with a name (printable ASCII except
# colon) then a colon; continuation lines start with WSP so they never match. Anything
# before the first field (an mbox "From " line, garbage) is ignored.
_FIELD_RE = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.MULTILINE)

_ENVELOPE_FIELDS: dict[bytes, str] = {
    b"date": "date",
    b"subject": "subject",
    b"from": "from_",
    b"sender": "sender",
    b"reply-to": "reply_to",
    b"to": "to",
    b"cc": "cc",
    b"bcc": "bcc",
    b"in-reply-to": "in_reply_to",
    b"message-id": "message_id",
}
_MIME_FIELDS = frozenset(
    {
        b"content-type",
        b"content-transfer-encoding",
        b"content-id",
        b"content-description",
        b"content-disposition",
        b"content-language",
        b"content-location",
        b"content-md5",
    }
)
_REFERENCES = b"references"  # THREAD=REFERENCES (RFC 5256 §6.4)
_WANTED = _MIME_FIELDS | frozenset(_ENVELOPE_FIELDS) | {_REFERENCES}


def header_end(raw: bytes, start: int, end: int) -> tuple[int, int]:
    """Where the header fields of the entity at `start` stop and where its body starts.

    RFC 5322 §2.1: the header ends at the first empty line (CRLF or bare LF). With no
    empty line before `end`, the whole entity is header and the body is empty.
    """
    if start >= end:
        return end, end
    if raw[start] == 0x0A:
        return start, start + 1
    if raw[start] == 0x0D and start + 1 < end and raw[start + 1] == 0x0A:
        return start, start + 2
    crlf = raw.find(b"\n\r\n", start, end)
    lf = raw.find(b"\n\n", start, end if crlf < 0 else crlf + 1)
    if lf >= 0:
        return lf + 1, lf + 2
    if crlf >= 0:
        return crlf + 1, crlf + 3
    return end, end


def iter_fields(raw: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int, int]]:
    """(lower-cased name, field start, value start, field end) for each header field.

    A field's end includes its line terminator and any continuation lines.
    """
    matches = list(_FIELD_RE.finditer(raw, start, end))
    for i, m in enumerate(matches):
        stop = matches[i + 1].start() if i + 1 < len(matches) else end
        yield m.group(1).lower(), m.start(), m.end(), stop


def text(data: bytes) -> str:
    """Header bytes as str: UTF-8 (RFC 6532) when valid, else Latin-1; NULs dropped."""
    try:
        s = data.decode("utf-8")
    except UnicodeDecodeError:
        s = data.decode("latin-1")
    if "\x00" in s:
        s = s.replace("\x00", "")
    return s


def unfold(value: bytes) -> str:
    """A field value unfolded (RFC 5322 §2.2.3) and stripped of surrounding space."""
    return text(value).replace("\r\n", "").replace("\n", "").strip()


# A header that occurs more than once (RFC 5322 §3.6 allows it for none of these):
# address fields are merged as if their addresses were in one comma-separated field,
# the other envelope fields take the last occurrence, the MIME fields the first. This
# is what Dovecot does; merging the addresses also means no recipient is hidden from
# the ENVELOPE and from SEARCH TO/CC behind a second To: or Cc: line.
_MERGED = frozenset({b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc"})
_LAST = frozenset({b"date", b"subject", b"in-reply-to", b"message-id"})
# Every Subject value, for SEARCH SUBJECT (Dovecot looks into each occurrence).
ALL_SUBJECTS = b"\x00subjects"


def _collect(raw: bytes, start: int, end: int) -> dict[bytes, str]:
    """The headers the metadata needs, unfolded, repeated ones combined (`_MERGED`,
    `_LAST`); ``ALL_SUBJECTS`` holds every Subject, one per line, when there are
    several."""
    found: dict[bytes, str] = {}
    subjects: list[str] = []
    for name, _, value_start, stop in iter_fields(raw, start, end):
        if name not in _WANTED:
            continue
        value = unfold(raw[value_start:stop])
        if name not in found:
            found[name] = value
        elif name in _MERGED:
            found[name] = ", ".join(v for v in (found[name], value) if v)
        elif name in _LAST:
            found[name] = value
        if name == b"subject":
            subjects.append(value)
    if len(subjects) > 1:
        found[ALL_SUBJECTS] = "\n".join(subjects)
    return found


_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`{|}~0-9A-Za-z]+")
_TEXT_PLAIN: tuple[str, str, Params] = ("text", "plain", (("charset", "US-ASCII"),))
_MESSAGE_RFC822: tuple[str, str, Params] = ("message", "rfc822", ())


def _entity(
    raw: bytes, start: int, end: int, in_digest: bool, depth: int, budget: _Budget
) -> tuple[BodyPart, dict[bytes, str]]:
    """Parse the MIME entity raw[start:end] and, recursively, its children."""
    fields_end, body_start = header_end(raw, start, end)
    headers = _collect(raw, start, fields_end)

    ctype = headers.get(b"content-type")
    parsed = parse_content_type(ctype) if ctype else None
    if parsed is None:
        # RFC 2045 §5.2 default; RFC 2046 §5.1.5 inside multipart/digest.
        ctype_t, subtype, params = _MESSAGE_RFC822 if in_digest and not ctype else _TEXT_PLAIN
    else:
        ctype_t, subtype, params = parsed
    encoding = headers.get(b"content-transfer-encoding", "").lower() or "7bit"

    parts: tuple[BodyPart, ...] = ()
    message: BodyPart | None = None
    envelope: Envelope | None = None
    if ctype_t == "multipart":
        boundary = _boundary(params)
        spans = None
        if boundary and depth < MAX_DEPTH:
            spans = split_multipart(raw, body_start, end, boundary, budget)
        if spans:
            digest = subtype == "digest"
            parts = tuple(_entity(raw, s, e, digest, depth + 1, budget)[0] for s, e in spans)
        else:
            # A multipart with no boundary or no part in it cannot be served as one
            # (IMAP body-type-mpart needs a part): serve it as text so it stays readable.
            ctype_t, subtype, params = _TEXT_PLAIN
    elif (
        ctype_t == "message"
        and subtype == "rfc822"
        and encoding in ("7bit", "8bit", "binary")
        and depth < MAX_DEPTH
    ):
        # RFC 2046 §5.2.1: the body is a whole message (a base64 one is served as a leaf).
        message, inner_headers = _entity(raw, body_start, end, False, depth + 1, budget)
        envelope = _envelope(inner_headers)

    if ctype_t == "text" and params and not any(k == "charset" for k, _ in params):
        params = (*params, ("charset", "US-ASCII"))
    elif ctype_t == "text" and not params:
        params = _TEXT_PLAIN[2]

    lines = 0
    if ctype_t == "text" or message is not None:
        # RFC 3501 body-fld-lines counts lines, and an RFC 5322 §2.1 line ends with
        # CRLF: a last line without one (a body without final CRLF, or a part whose
        # CRLF belongs to the next boundary, RFC 2046 §5.1.1) is not counted. Dovecot
        # counts the same way.
        lines = raw.count(b"\n", body_start, end)

    disposition: str | None = None
    disposition_params: Params = ()
    cdisp = headers.get(b"content-disposition")
    if cdisp:
        value, disposition_params = _split_params(cdisp)
        disposition = value.lower() or None
        if disposition is None:
            disposition_params = ()
    language = tuple(
        tag for tag in (t.strip() for t in headers.get(b"content-language", "").split(",")) if tag
    )
    location = headers.get(b"content-location")
    if location is not None:
        # RFC 2557 §4.4.2: a folded URL is unfolded by removing all whitespace.
        location = "".join(location.split())

    part = BodyPart(
        type=ctype_t,
        subtype=subtype,
        params=params,
        header_start=start,
        body_start=body_start,
        end=end,
        id=headers.get(b"content-id"),
        description=headers.get(b"content-description"),
        encoding=encoding,
        disposition=disposition,
        disposition_params=disposition_params,
        language=language,
        location=location,
        md5=headers.get(b"content-md5"),
        lines=lines,
        parts=parts,
        envelope=envelope,
        message=message,
    )
    return part, headers


def _boundary(params: Params) -> bytes | None:
    for key, value in params:
        if key == "boundary":
            # RFC 2046 §5.1.1: 1 to 70 characters; be lenient on length, not on emptiness.
            data = value.encode("utf-8", "surrogateescape")
            return data or None
    for key, value in params:
        if key == "boundary*":
            # Given in RFC 2231 extended form (any parameter may be, §4): decoded.
            # Dovecot does not decode it and finds no part; the RFC is with us.
            data = rfc2231_decode(value)
            return data or None
    return None


# Look-alike delimiter lines tolerated before compiling a regex for the rest (compiling
# costs more than a whole ordinary message's analysis, so only hostile input pays it).
_MISSES_BEFORE_REGEX = 16


def split_multipart(
    raw: bytes, start: int, end: int, boundary: bytes, budget: _Budget | None = None
) -> list[tuple[int, int]]:
    """(start, end) of each body part of a multipart body raw[start:end] (RFC 2046 §5.1.1).

    A delimiter is `--boundary` at the start of a line, then optional transport padding
    (spaces, tabs) and the line end; `--boundary--` closes. The line end before a
    delimiter belongs to the delimiter, not to the part. An unclosed multipart runs
    to `end`; the preamble and the epilogue are not parts.
    """
    delim = b"--" + boundary
    dlen = len(delim)
    # Only delimiters at a line start count: look for LF + delimiter so that
    # occurrences inside lines cost nothing (hostile input), and check `start` apart.
    line_delim = b"\n" + delim
    spans: list[tuple[int, int]] = []
    pos = start
    current = -1
    misses = 0
    pattern: re.Pattern[bytes] | None = None
    while True:
        if pattern is not None:
            # Many look-alike lines (hostile input): let the regex engine skip them.
            m = pattern.search(raw, max(pos - 1, start), end)
            if m is None:
                break
            p, q, close = m.start() + 1, m.end(), m.group(1) is not None
        else:
            if pos == start and raw.startswith(delim, start, end):
                p = start
            else:
                p = raw.find(line_delim, max(pos - 1, start), end)
                if p < 0:
                    break
                p += 1
            q = p + dlen
            close = q + 2 <= end and raw[q : q + 2] == b"--"
            if close:
                q += 2
            while q < end and raw[q] in (0x20, 0x09):
                q += 1
            if q < end:
                if raw[q] == 0x0A:
                    q += 1
                elif raw[q] == 0x0D and q + 1 < end and raw[q + 1] == 0x0A:
                    q += 2
                else:
                    pos = p + 1
                    misses += 1
                    if misses == _MISSES_BEFORE_REGEX:
                        pattern = re.compile(b"\n" + re.escape(delim) + rb"(--)?[ \t]*(?:\r?\n|\Z)")
                    continue
        if current >= 0:
            stop = p - 2 if raw[p - 2 : p] == b"\r\n" else p - 1
            spans.append((current, max(current, stop)))
        if close:
            current = -1
            break
        if budget is not None:
            if budget.parts <= 0:
                # Out of parts: whatever follows stays inside the last part.
                if spans:
                    spans[-1] = (spans[-1][0], end)
                current = -1
                break
            budget.parts -= 1
        current = q
        pos = q
    if current >= 0:
        spans.append((current, end))
    return spans


# ------------------------------------------------------------- structured field values


def _split_params(value: str) -> tuple[str, Params]:
    """RFC 2045 §5.1 `value *(";" attribute "=" value)`, lenient.

    Returns the first segment and the parameters (names lower-cased, quoted values
    unquoted, RFC 2231 names and values kept as written). Comments (RFC 5322 §3.2.2)
    outside quoted strings are dropped.
    """
    segments = value.split(";") if '"' not in value and "(" not in value else _segments(value)
    params: list[tuple[str, str]] = []
    for seg in segments[1:]:
        name, eq, val = seg.partition("=")
        name = name.strip().lower()
        if not eq or not name:
            continue
        val = val.strip()
        if val.startswith('"'):
            val = _unquote(val)
        params.append((name, val))
    return segments[0].strip(), _rfc2231_merge(params)


# RFC 2231 §3 / §4: "name*0", "name*1"... continue one value; a trailing "*" marks a
# segment (or a whole value) written charset'language'percent-encoded.
_SEGMENT_RE = re.compile(r"(.+?)\*([0-9]{1,3})(\*?)")
# RFC 2231 §7 attribute-char: what may stay unencoded in an extended value.
_ATTRIBUTE_CHAR = frozenset("!#$&+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                            "ABCDEFGHIJKLMNOPQRSTUVWXYZ")  # fmt: skip


def _rfc2231_merge(params: list[tuple[str, str]]) -> Params:
    """Join RFC 2231 continuations (``name*0``, ``name*1*``...) into one parameter.

    A value whose first segment is encoded stays encoded, as ``name*`` with
    ``charset'language'`` kept (BODYSTRUCTURE is 7-bit; clients decode it), plain
    segments after it percent-encoded where needed; an all-plain value becomes
    ``name``. As Dovecot writes them, the ordinary parameters come first, then the
    RFC 2231 ones in the order they first appeared.
    """
    if not any("*" in name for name, _ in params):
        return tuple(params)
    plain: list[tuple[str, str]] = []
    groups: dict[str, dict[int, tuple[str, bool]]] = {}
    for name, value in params:
        m = _SEGMENT_RE.fullmatch(name)
        if m is not None:
            groups.setdefault(m.group(1), {})[int(m.group(2))] = (value, bool(m.group(3)))
        elif name.endswith("*") and len(name) > 1:
            groups.setdefault(name[:-1], {})[0] = (value, True)
        else:
            plain.append((name, value))
    merged: list[tuple[str, str]] = []
    for base, segments in groups.items():
        if 0 not in segments:
            continue  # RFC 2231 §3: a value starts at segment 0
        encoded = segments[0][1]
        pieces: list[str] = []
        for i in range(len(segments)):
            if i not in segments:
                break  # a gap ends the value
            value, enc = segments[i]
            pieces.append(value if enc or not encoded else _percent_encode(value))
        merged.append((f"{base}*" if encoded else base, "".join(pieces)))
    return (*plain, *merged)


def _percent_encode(value: str) -> str:
    data = value.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if chr(b) in _ATTRIBUTE_CHAR else f"%{b:02X}" for b in data)


def rfc2231_decode(value: str) -> bytes:
    """The octets of an RFC 2231 extended value ``charset'language'%xx...`` (§4)."""
    parts = value.split("'", 2)
    text_ = parts[2] if len(parts) == 3 else value
    return re.sub(
        rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), text_.encode("utf-8")
    )


def _segments(value: str) -> list[str]:
    """Split on ';' outside quoted strings, dropping comments outside quoted strings."""
    segments: list[str] = []
    cur: list[str] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == '"':
            j = i + 1
            while j < n and value[j] != '"':
                j += 2 if value[j] == "\\" else 1
            cur.append(value[i : j + 1])
            i = j + 1
        elif c == "(":
            level = 0
            while i < n:
                if value[i] == "\\":
                    i += 2
                    continue
                if value[i] == "(":
                    level += 1
                elif value[i] == ")":
                    level -= 1
                    if level == 0:
                        break
                i += 1
            i += 1
        elif c == ";":
            segments.append("".join(cur))
            cur = []
            i += 1
        else:
            cur.append(c)
            i += 1
    segments.append("".join(cur))
    return segments


def _unquote(val: str) -> str:
    """The content of an RFC 5322 quoted-string (lenient on a missing closing quote)."""
    out: list[str] = []
    i, n = 1, len(val)
    while i < n:
        c = val[i]
        if c == "\\" and i + 1 < n:
            out.append(val[i + 1])
            i += 2
            continue
        if c == '"':
            break
        out.append(c)
        i += 1
    return "".join(out)


def parse_content_type(value: str) -> tuple[str, str, Params] | None:
    """(type, subtype, params) of a Content-Type value, or None if it is not valid.

    RFC 2045 §5.2: an invalid Content-Type is treated as the default; the caller decides
    which default applies.
    """
    main, params = _split_params(value)
    ctype, slash, subtype = main.partition("/")
    ctype = ctype.strip().lower()
    subtype = subtype.strip().lower()
    if not slash or not _TOKEN_RE.fullmatch(ctype) or not _TOKEN_RE.fullmatch(subtype):
        return None
    return ctype, subtype, params


def normalise_message_id(value: str | None) -> str | None:
    """The id inside `<...>` (RFC 5322 §3.6.4), whitespace removed; None if empty."""
    if not value:
        return None
    lt = value.find("<")
    if lt >= 0:
        gt = value.find(">", lt)
        value = value[lt + 1 : gt if gt >= 0 else len(value)]
    value = "".join(value.split())
    return value or None


def _envelope(headers: dict[bytes, str]) -> Envelope:
    return Envelope(**{attr: headers.get(name) for name, attr in _ENVELOPE_FIELDS.items()})


# ------------------------------------------------------------------ decoding for SEARCH

# RFC 2047 §2 encoded-word; charset may carry an RFC 2231 §5 language suffix.
_ENCODED_WORD_RE = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_CP1252_ALIASES = frozenset(
    {
        "iso-8859-1",
        "iso8859-1",
        "iso_8859-1",
        "latin1",
        "latin-1",
        "l1",
        "windows-1252",
        "cp1252",
        "x-cp1252",
    }
)


def decode_charset(data: bytes, charset: str | None) -> str:
    """Decode text bytes in `charset`, never raising.

    US-ASCII and missing charsets are tried as UTF-8 first (8-bit mail often lies);
    ISO-8859-1 is read as its superset windows-1252, as mail readers do. Unknown
    charsets fall back to UTF-8 with replacement characters.
    """
    cs = (charset or "").strip().strip('"').lower()
    if cs in ("utf-8", "utf8"):
        return data.decode("utf-8", "replace")
    if cs in ("", "us-ascii", "ascii"):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("cp1252", "replace")
    if cs in _CP1252_ALIASES:
        return data.decode("cp1252", "replace")
    try:
        # bytes.decode refuses non-text codecs (base64, rot13...) with LookupError.
        return data.decode(cs, "replace")
    except (LookupError, UnicodeError, ValueError, TypeError):
        return data.decode("utf-8", "replace")


def decode_base64(data: bytes) -> bytes:
    """RFC 2045 §6.8 base64, ignoring characters outside the alphabet and bad padding."""
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        pass
    clean = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
    clean = clean[: len(clean) - len(clean) % 4] if len(clean) % 4 == 1 else clean
    clean += b"=" * (-len(clean) % 4)
    try:
        return binascii.a2b_base64(clean)
    except binascii.Error:  # pragma: no cover - clean input always decodes
        return b""


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words; whitespace between adjacent ones is dropped (§6.2)."""
    if "=?" not in value:
        return value
    out: list[str] = []
    last = 0
    after_word = False
    for m in _ENCODED_WORD_RE.finditer(value):
        gap = value[last : m.start()]
        if not (after_word and not gap.strip()):
            out.append(gap)
        charset, enc, payload = m.groups()
        data = payload.encode("ascii", "replace")
        decoded = decode_base64(data) if enc in "bB" else binascii.a2b_qp(data, header=True)
        out.append(decode_charset(decoded, charset.split("*", 1)[0]))
        last = m.end()
        after_word = True
    out.append(value[last:])
    return "".join(out)


def parse_date(value: str | None) -> dt.date | None:
    """The calendar date of an RFC 5322 §3.3 date-time in its own zone, None if unreadable."""
    if not value:
        return None
    try:
        parts = parsedate_tz(value)
        if parts is None:
            return None
        return dt.date(parts[0], parts[1], parts[2])
    except (ValueError, TypeError, IndexError, OverflowError):
        return None


def _search_keys(env: Envelope) -> tuple[tuple[str, str, str | None], ...]:
    return (
        ("from", "from_", env.from_),
        ("to", "to", env.to),
        ("cc", "cc", env.cc),
        ("bcc", "bcc", env.bcc),
        ("subject", "subject", env.subject),
    )


def _search_headers(env: Envelope, subjects: str | None = None) -> SearchHeaders:
    return SearchHeaders(
        from_=decode_words(env.from_ or ""),
        to=decode_words(env.to or ""),
        cc=decode_words(env.cc or ""),
        bcc=decode_words(env.bcc or ""),
        subject=decode_words(subjects or env.subject or ""),
        sent=parse_date(env.date),
    )


# ------------------------------------------------------------------------------ JSON

_ENVELOPE_JSON = (
    ("date", "date"),
    ("subject", "subject"),
    ("from", "from_"),
    ("sender", "sender"),
    ("reply-to", "reply_to"),
    ("to", "to"),
    ("cc", "cc"),
    ("bcc", "bcc"),
    ("in-reply-to", "in_reply_to"),
    ("message-id", "message_id"),
)


def _envelope_to_json(env: Envelope) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, attr in _ENVELOPE_JSON:
        value = getattr(env, attr)
        if value is not None:
            out[key] = value
    return out


def _envelope_from_json(d: Any) -> Envelope:
    if not isinstance(d, dict):
        raise MetaFormatError("bad envelope")
    return Envelope(
        **{attr: None if d.get(key) is None else _str(d[key]) for key, attr in _ENVELOPE_JSON}
    )


def _part_to_json(p: BodyPart) -> dict[str, Any]:
    d: dict[str, Any] = {"t": p.type, "s": p.subtype, "o": [p.header_start, p.body_start, p.end]}
    if p.params:
        d["p"] = [list(kv) for kv in p.params]
    if p.id is not None:
        d["i"] = p.id
    if p.description is not None:
        d["d"] = p.description
    if p.encoding != "7bit":
        d["c"] = p.encoding
    if p.disposition is not None:
        d["x"] = p.disposition
    if p.disposition_params:
        d["xp"] = [list(kv) for kv in p.disposition_params]
    if p.language:
        d["l"] = list(p.language)
    if p.location is not None:
        d["lo"] = p.location
    if p.md5 is not None:
        d["m5"] = p.md5
    if p.lines:
        d["n"] = p.lines
    if p.parts:
        d["ps"] = [_part_to_json(c) for c in p.parts]
    if p.envelope is not None:
        d["e"] = _envelope_to_json(p.envelope)
    if p.message is not None:
        d["g"] = _part_to_json(p.message)
    return d


def _part_from_json(d: Any, depth: int) -> BodyPart:
    if not isinstance(d, dict) or depth > 2 * MAX_DEPTH + 2:
        raise MetaFormatError("bad body part")
    hs, bs, end = (_int(x) for x in d["o"])
    env = d.get("e")
    msg = d.get("g")
    return BodyPart(
        type=_str(d["t"]),
        subtype=_str(d["s"]),
        params=_params(d.get("p", ())),
        header_start=hs,
        body_start=bs,
        end=end,
        id=_opt_str(d.get("i")),
        description=_opt_str(d.get("d")),
        encoding=_str(d.get("c", "7bit")),
        disposition=_opt_str(d.get("x")),
        disposition_params=_params(d.get("xp", ())),
        language=tuple(_str(x) for x in d.get("l", ())),
        location=_opt_str(d.get("lo")),
        md5=_opt_str(d.get("m5")),
        lines=_int(d.get("n", 0)),
        parts=tuple(_part_from_json(c, depth + 1) for c in d.get("ps", ())),
        envelope=None if env is None else _envelope_from_json(env),
        message=None if msg is None else _part_from_json(msg, depth + 1),
    )


def _params(items: Any) -> Params:
    out: list[tuple[str, str]] = []
    for item in items:
        key, value = item
        out.append((_str(key), _str(value)))
    return tuple(out)


def _str(x: Any) -> str:
    if not isinstance(x, str):
        raise MetaFormatError("expected a string")
    return x


def _opt_str(x: Any) -> str | None:
    return None if x is None else _str(x)


def _int(x: Any) -> int:
    if not isinstance(x, int) or isinstance(x, bool):
        raise MetaFormatError("expected an integer")
    return x
