"""IMAP views of a message, served from its `MessageMeta` (RFC 3501 §6.4.5, §7.4.2).

ENVELOPE and BODY/BODYSTRUCTURE are built from the metadata alone; BODY[section],
BINARY[section] (RFC 3516) and body SEARCH also read the decrypted raw bytes, using the
byte offsets the metadata recorded. Everything here returns IMAP syntax as bytes (or
plain data for sections) and does no I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Final

from relay.bounded import Bounded
from relay.message.analysis import (
    BodyPart,
    Envelope,
    MessageMeta,
    Params,
    decode_base64,
    decode_charset,
    decode_words,
    header_end,
    iter_fields,
    text,
)

NIL: Final = b"NIL"

SECTION_KINDS: Final = frozenset(
    {"", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"}
)


class SectionSpecError(ValueError):
    """A section text that RFC 3501 §6.4.5 does not define (the parser should reject it)."""


# ------------------------------------------------------------------ IMAP string syntax


def quote(value: str) -> bytes:
    """An IMAP string: quoted when RFC 3501 allows it, else a literal (8-bit, CR, LF)."""
    if value.isascii() and "\r" not in value and "\n" not in value and "\x00" not in value:
        return b'"' + value.replace("\\", "\\\\").replace('"', '\\"').encode("ascii") + b'"'
    data = value.encode("utf-8", "surrogateescape")
    return b"{%d}\r\n" % len(data) + data


def nstring(value: str | None) -> bytes:
    """NIL for None, else an IMAP string."""
    return NIL if value is None else quote(value)


def _params(params: Params) -> bytes:
    # RFC 3501 body-fld-param: "(" string SP string *(SP string SP string) ")" / nil
    if not params:
        return NIL
    return b"(" + b" ".join(quote(k.upper()) + b" " + quote(v) for k, v in params) + b")"


# ------------------------------------------------------------------------- ENVELOPE


class Rendered:
    """The ENVELOPE, BODYSTRUCTURE and BODY values of recently fetched messages, by
    blob id: a stored message never changes, so a value stays right for as long as it
    is kept (each co-holder's client asks for the same ones); the oldest go first
    once more than `max_entries` are held."""

    def __init__(self, max_entries: int) -> None:
        self._values: Bounded[tuple[str, str], bytes] = Bounded(max_entries)

    def get(self, blob_id: str, kind: str, meta: MessageMeta) -> bytes:
        """`kind`: ``ENVELOPE``, ``BODYSTRUCTURE`` or ``BODY``."""
        key = (blob_id, kind)
        value = self._values.get(key)
        if value is None:
            if kind == "ENVELOPE":
                value = envelope(meta)
            else:
                value = bodystructure(meta, kind == "BODYSTRUCTURE")
            self._values.put(key, value)
        return value


def envelope(meta: MessageMeta) -> bytes:
    """The FETCH ENVELOPE value of a message (RFC 3501 §7.4.2)."""
    return envelope_of(meta.envelope)


def envelope_of(env: Envelope) -> bytes:
    """ENVELOPE for an Envelope (the message's, or an attached message's)."""
    from_ = _address_list(env.from_)
    # RFC 3501 §7.4.2: absent or empty Sender / Reply-To take the From value.
    sender = _address_list(env.sender) if env.sender else NIL
    reply_to = _address_list(env.reply_to) if env.reply_to else NIL
    if sender == NIL:
        sender = from_
    if reply_to == NIL:
        reply_to = from_
    return b"".join(
        (
            b"(",
            nstring(env.date),
            b" ",
            nstring(env.subject),
            b" ",
            from_,
            b" ",
            sender,
            b" ",
            reply_to,
            b" ",
            _address_list(env.to),
            b" ",
            _address_list(env.cc),
            b" ",
            _address_list(env.bcc),
            b" ",
            nstring(env.in_reply_to),
            b" ",
            nstring(env.message_id),
            b")",
        )
    )


def _address_list(value: str | None) -> bytes:
    if not value:
        return NIL
    items = parse_addresses(value)
    if not items:
        return NIL
    return b"(" + b"".join(_address(a) for a in items) + b")"


def _address(a: tuple[str | None, str | None, str | None, str | None]) -> bytes:
    name, adl, mailbox, host = a
    return b"(" + b" ".join((nstring(name), nstring(adl), nstring(mailbox), nstring(host))) + b")"


Address = tuple[str | None, str | None, str | None, str | None]

# Token kinds of the RFC 5322 §3.4 address lexer.
_ATOM, _QUOTED, _COMMENT, _SPECIAL, _LITERAL = range(5)
_SPECIALS = frozenset("<>@,;:.")


def _tokens(value: str) -> list[tuple[int, str]]:
    """Lex an address header: atoms, quoted strings, comments, domain literals, specials."""
    out: list[tuple[int, str]] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in " \t\r\n":
            i += 1
        elif c == '"':
            buf: list[str] = []
            i += 1
            while i < n and value[i] != '"':
                if value[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(value[i])
                i += 1
            out.append((_QUOTED, "".join(buf)))
            i += 1
        elif c == "(":
            buf = []
            level = 0
            while i < n:
                ch = value[i]
                if ch == "\\" and i + 1 < n:
                    buf.append(value[i + 1])
                    i += 2
                    continue
                if ch == "(":
                    level += 1
                    if level > 1:
                        buf.append(ch)
                elif ch == ")":
                    level -= 1
                    if level == 0:
                        break
                    buf.append(ch)
                else:
                    buf.append(ch)
                i += 1
            out.append((_COMMENT, "".join(buf).strip()))
            i += 1
        elif c == "[":
            j = value.find("]", i)
            j = n - 1 if j < 0 else j
            out.append((_LITERAL, value[i : j + 1]))
            i = j + 1
        elif c in _SPECIALS:
            out.append((_SPECIAL, c))
            i += 1
        else:
            j = i
            while j < n and value[j] not in _SPECIALS and value[j] not in ' \t\r\n"([':
                j += 1
            out.append((_ATOM, value[i:j]))
            i = j
    return out


def parse_addresses(value: str) -> list[Address]:
    """RFC 5322 §3.4 address-list → IMAP address structures (RFC 3501 §7.4.2).

    Each is (name, adl, mailbox, host). A group is framed by (None, None, group-name,
    None) and (None, None, None, None). Lenient: garbage yields what can be read.
    """
    out: list[Address] = []
    current: list[tuple[int, str]] = []
    in_angle = False
    in_group = False
    for kind, tok in _tokens(value):
        if kind == _SPECIAL:
            if tok == "<":
                in_angle = True
            elif tok == ">":
                in_angle = False
            elif not in_angle:
                if tok == ",":
                    _flush(current, out)
                    current = []
                    continue
                if tok == ":" and not in_group and not any(k == _SPECIAL for k, _ in current):
                    out.append((None, None, _phrase(current) or "", None))
                    in_group = True
                    current = []
                    continue
                if tok == ";" and in_group:
                    _flush(current, out)
                    current = []
                    out.append((None, None, None, None))
                    in_group = False
                    continue
        current.append((kind, tok))
    _flush(current, out)
    if in_group:
        out.append((None, None, None, None))
    return out


def _phrase(tokens: list[tuple[int, str]]) -> str | None:
    words: list[str] = []
    for kind, tok in tokens:
        if kind in (_ATOM, _QUOTED, _LITERAL):
            words.append(tok)
        elif kind == _SPECIAL and tok == "." and words:
            words[-1] += "."
    return " ".join(words) or None


def _local_or_domain(tokens: list[tuple[int, str]]) -> str:
    # A quoted local part is given without its quotes (``"quoted local"@x`` has the
    # mailbox name ``quoted local``), as Dovecot and Cyrus give it: the ENVELOPE field
    # is the mailbox name, the IMAP string does the quoting (RFC 3501 §7.4.2).
    parts: list[str] = []
    for kind, tok in tokens:
        if kind in (_QUOTED, _ATOM, _LITERAL) or (kind == _SPECIAL and tok == "."):
            parts.append(tok)
    return "".join(parts)


def _addr_spec(tokens: list[tuple[int, str]]) -> tuple[str, str | None]:
    at = max((i for i, (k, t) in enumerate(tokens) if k == _SPECIAL and t == "@"), default=-1)
    if at < 0:
        return _local_or_domain(tokens), None
    return _local_or_domain(tokens[:at]), _local_or_domain(tokens[at + 1 :])


def _flush(tokens: list[tuple[int, str]], out: list[Address]) -> None:
    if not tokens:
        return
    lt = next((i for i, (k, t) in enumerate(tokens) if k == _SPECIAL and t == "<"), -1)
    adl: str | None = None
    if lt >= 0:
        name = _phrase(tokens[:lt])
        inner = tokens[lt + 1 :]
        gt = next((i for i, (k, t) in enumerate(inner) if k == _SPECIAL and t == ">"), len(inner))
        inner = inner[:gt]
        colon = next((i for i, (k, t) in enumerate(inner) if k == _SPECIAL and t == ":"), -1)
        if colon >= 0:
            # Obsolete source route (RFC 5322 §4.4): "@a,@b:" becomes the adl.
            adl = "".join(t for k, t in inner[:colon] if k != _COMMENT) or None
            inner = inner[colon + 1 :]
        local, host = _addr_spec(inner)
    else:
        local, host = _addr_spec(tokens)
        # "user@host (Full Name)": the comment is the only name there is.
        comments = [t for k, t in tokens if k == _COMMENT and t]
        name = comments[-1] if comments else None
    if not local and not host:
        return
    # RFC 3501: a NIL host means group syntax, so a mailbox without domain gets "".
    out.append((name, adl, local, host or ""))


@functools.lru_cache(maxsize=65536)
def address_search_text(value: str) -> str:
    """An address header as SEARCH FROM/TO/CC/BCC looks into it (RFC 3501 §6.4.4 leaves
    the matching to the server): each address written again as ``Name <local@domain>``
    (``local@domain`` without a name), the name RFC 2047-decoded (a comment stands for
    it when there is none, as in ``user@host (Name)``), a group as ``group: a, b;``.

    A search string then matches the whole address, its local part, its domain or its
    display name, whatever the header's own spelling (comments, angle brackets,
    folding): Dovecot rewrites address headers the same way before matching.
    """
    out: list[str] = []
    pending_sep = ""
    for name, _adl, mailbox, host in parse_addresses(value):
        if host is None:
            if mailbox is not None:  # group start
                out.append(f"{pending_sep}{decode_words(mailbox)}: ")
                pending_sep = ""
            else:  # group end
                out.append(";")
                pending_sep = ", "
            continue
        spec = f"{mailbox}@{host}" if host else mailbox or ""
        text_ = f"{decode_words(name)} <{spec}>" if name else spec
        out.append(pending_sep + text_)
        pending_sep = ", "
    return "".join(out)


# ---------------------------------------------------------------- BODY / BODYSTRUCTURE


def bodystructure(meta: MessageMeta, extended: bool) -> bytes:
    """FETCH BODYSTRUCTURE (extended=True) or BODY (extended=False), RFC 3501 §7.4.2."""
    return _body(meta.body, extended)


def _body(p: BodyPart, ext: bool) -> bytes:
    if p.parts:
        out = [b"(", *(_body(c, ext) for c in p.parts), b" ", quote(p.subtype.upper())]
        if ext:
            # body-ext-mpart = body-fld-param SP body-fld-dsp SP body-fld-lang SP body-fld-loc
            out += [b" ", _params(p.params), b" ", *_ext_tail(p)]
        out.append(b")")
        return b"".join(out)
    media = (quote(p.type.upper()), quote(p.subtype.upper()))
    if p.message is None and p.type == "message" and p.subtype == "rfc822":
        # An encoded message/rfc822 (RFC 2046 §5.2.1 forbids it) was not parsed: clients
        # would read MESSAGE RFC822 as body-type-msg and look for an envelope.
        media = (b'"APPLICATION"', b'"OCTET-STREAM"')
    fields = [
        *media,
        _params(p.params),
        nstring(p.id),
        nstring(p.description),
        quote(p.encoding.upper()),
        b"%d" % p.size,
    ]
    if p.message is not None and p.envelope is not None:
        # body-type-msg: envelope SP body SP body-fld-lines
        fields += [envelope_of(p.envelope), _body(p.message, ext), b"%d" % p.lines]
    elif p.type == "text":
        fields.append(b"%d" % p.lines)
    if ext:
        # body-ext-1part = body-fld-md5 SP body-fld-dsp SP body-fld-lang SP body-fld-loc
        fields.append(nstring(p.md5))
        return b"(" + b" ".join(fields) + b" " + b"".join(_ext_tail(p)) + b")"
    return b"(" + b" ".join(fields) + b")"


def _ext_tail(p: BodyPart) -> list[bytes]:
    if p.disposition is None:
        dsp = NIL
    else:
        dsp = b"(" + quote(p.disposition.upper()) + b" " + _params(p.disposition_params) + b")"
    if not p.language:
        lang = NIL
    elif len(p.language) == 1:
        lang = quote(p.language[0])
    else:
        lang = b"(" + b" ".join(quote(t) for t in p.language) + b")"
    return [dsp, b" ", lang, b" ", nstring(p.location)]


# --------------------------------------------------------------------------- sections


def find_part(meta: MessageMeta, part: tuple[int, ...]) -> BodyPart | None:
    """The entity a section-part number names (RFC 3501 §6.4.5), None if there is none.

    Part 1 of a non-multipart message is its body; the parts of a message/rfc822 part
    are those of the message it encapsulates. `()` is the whole message. Part 1 of
    any other leaf is the leaf itself (``2.1`` of a single text part 2), as for a
    non-multipart message: what Dovecot answers, where RFC 3501 §6.4.5 only speaks
    of the top level.
    """
    node = meta.body
    at_message = True  # `node` is the root entity of a (possibly encapsulated) message
    for number in part:
        if not at_message and node.message is not None:
            node, at_message = node.message, True
        if node.parts:
            if not 1 <= number <= len(node.parts):
                return None
            node = node.parts[number - 1]
        elif number != 1:
            return None
        at_message = False
    return node


def part_exists(meta: MessageMeta, part: tuple[int, ...]) -> bool:
    """Whether `part` names an entity of the message (for answering NIL or "")."""
    return find_part(meta, part) is not None


def section(
    raw: bytes,
    meta: MessageMeta,
    part: tuple[int, ...],
    kind: str = "",
    fields: tuple[str, ...] = (),
) -> bytes:
    """The data of BODY[<part>.<kind> (<fields>)] (RFC 3501 §6.4.5).

    `kind` is "", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT" or "MIME"
    (case-insensitive). HEADER, HEADER.FIELDS(.NOT) and TEXT apply to the message or to
    a message/rfc822 part; MIME to a numbered part. A part or kind that does not apply
    gives b"" (use `part_exists` to answer NIL instead).
    """
    kind = kind.upper()
    if kind not in SECTION_KINDS:
        raise SectionSpecError(f"unknown section text {kind!r}")
    node = find_part(meta, part)
    if node is None:
        return b""
    if kind == "":
        return raw if not part else raw[node.body_start : node.end]
    if kind == "MIME":
        return raw[node.header_start : node.body_start] if part else b""
    message = node if not part else node.message
    if message is None:
        return b""
    if kind == "TEXT":
        return raw[message.body_start : message.end]
    if kind == "HEADER":
        return raw[message.header_start : message.body_start]
    return header_fields(raw, message, fields, exclude=kind == "HEADER.FIELDS.NOT")


def header_fields(raw: bytes, entity: BodyPart, fields: tuple[str, ...], *, exclude: bool) -> bytes:
    """HEADER.FIELDS / HEADER.FIELDS.NOT: the matching (or other) fields as written,
    folding kept, followed by the blank line (RFC 3501 §6.4.5)."""
    wanted = {f.lower().encode("ascii", "replace") for f in fields}
    fields_end, body_start = header_end(raw, entity.header_start, entity.end)
    out = [
        raw[start:stop]
        for name, start, _, stop in iter_fields(raw, entity.header_start, fields_end)
        if (name in wanted) != exclude
    ]
    out.append(raw[fields_end:body_start] if body_start > fields_end else b"\r\n")
    return b"".join(out)


def partial(data: bytes, start: int, length: int) -> bytes:
    """The <start.length> substring of a section (RFC 3501 §6.4.5); b"" past the end."""
    if start < 0 or length < 0:
        raise SectionSpecError("negative partial")
    return data[start : start + length]


def binary_section(raw: bytes, meta: MessageMeta, part: tuple[int, ...]) -> bytes | None:
    """BINARY[part] (RFC 3516 §4.2): the part's body with its transfer encoding removed.

    None when the encoding is not one we know (the server answers [UNKNOWN-CTE]); b""
    for a part that does not exist. `()` is the whole message, untouched.
    """
    if not part:
        return raw
    node = find_part(meta, part)
    if node is None:
        return b""
    return _decode_body(raw[node.body_start : node.end], node)


def _decode_body(data: bytes, node: BodyPart) -> bytes | None:
    # A multipart or an encapsulated message is not itself encoded (RFC 2045 §6.4).
    if node.parts or node.message is not None:
        return data
    enc = node.encoding
    if enc in ("7bit", "8bit", "binary"):
        return data
    if enc == "base64":
        return decode_base64(data)
    if enc == "quoted-printable":
        return decode_qp(data)
    return None


_QP_ESCAPE: Final = re.compile(rb"=([0-9A-Fa-f]{2})")


def decode_qp(data: bytes) -> bytes:
    """RFC 2045 §6.7 quoted-printable: trailing white space on a line is dropped (rule
    3), a final ``=`` (after that) is a soft line break (rule 5), ``=XX`` is an octet;
    any other ``=`` is kept as it is (the robustness the RFC's note recommends)."""
    out = bytearray()
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        # A hard line break is kept as it came (CRLF, or a bare LF as in lenient mail).
        end = b"\r\n" if line.endswith(b"\r") else b"\n"
        line = line.removesuffix(b"\r").rstrip(b" \t")
        soft = line.endswith(b"=")
        if soft:
            line = line[:-1]
        out += _QP_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), line)
        if not soft and i < len(lines) - 1:
            out += end
    return bytes(out)


# ----------------------------------------------------------------------------- SEARCH


def search_text(raw: bytes, meta: MessageMeta, needle: str, where: str) -> bool:
    """SEARCH TEXT / BODY (RFC 3501 §6.4.4): case-insensitive substring match.

    BODY looks in the decoded text of every text part (transfer encoding and charset
    removed) and in the headers of attached messages; TEXT also in the message's own
    headers, with RFC 2047 words decoded. Non-text attachments are not searched.
    """
    where = where.upper()
    if where not in ("TEXT", "BODY"):
        raise SectionSpecError(f"unknown search key {where!r}")
    folded = needle.casefold()
    if not folded:
        return True
    if where == "TEXT" and folded in _header_text(raw, meta.body).casefold():
        return True
    return any(folded in chunk.casefold() for chunk in _body_texts(raw, meta.body))


def search_header(raw: bytes, meta: MessageMeta, field: str, needle: str) -> bool:
    """SEARCH HEADER <field> <string>: a field of that name contains `needle`
    (case-insensitive, RFC 2047 decoded); an empty needle matches any such field."""
    name = field.lower().encode("ascii", "replace")
    folded = needle.casefold()
    fields_end, _ = header_end(raw, 0, len(raw))
    for fname, _, value_start, stop in iter_fields(raw, 0, fields_end):
        if fname == name:
            value = decode_words(text(raw[value_start:stop]).replace("\r\n", "").replace("\n", ""))
            if folded in value.casefold():
                return True
    return False


def _header_text(raw: bytes, entity: BodyPart) -> str:
    fields_end, _ = header_end(raw, entity.header_start, entity.end)
    unfolded = text(raw[entity.header_start : fields_end]).replace("\r\n ", " ")
    unfolded = unfolded.replace("\r\n\t", "\t").replace("\n ", " ").replace("\n\t", "\t")
    return decode_words(unfolded)


def _body_texts(raw: bytes, node: BodyPart) -> Iterator[str]:
    if node.parts:
        for child in node.parts:
            yield from _body_texts(raw, child)
    elif node.message is not None:
        yield _header_text(raw, node.message)
        yield from _body_texts(raw, node.message)
    elif node.type == "text":
        data = _decode_body(raw[node.body_start : node.end], node)
        if data is None:
            data = raw[node.body_start : node.end]
        yield decode_charset(data, node.param("charset"))
