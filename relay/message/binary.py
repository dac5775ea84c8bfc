"""Binary content arriving by APPEND ``~{n}`` (RFC 3516 §4.4), made safe to serve, pure.

A message appended as a literal8 may hold parts whose content is binary (RFC 2045 §6.2
``binary``, or NULs anywhere): such octets cannot be sent in a BODY[] literal (RFC 3501
§4.3: no NUL), so `encode_binary_parts` stores those parts base64-encoded instead
(with their Content-Transfer-Encoding changed): BODY[] then shows base64, BINARY[]
gives back the original octets, and nothing is lost.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

from relay.message.analysis import BodyPart, MessageMeta, header_end, iter_fields

_LINE = 76  # RFC 2045 §6.8: encoded lines of at most 76 characters


def _leaves(node: BodyPart) -> Iterator[BodyPart]:
    if node.parts:
        for p in node.parts:
            yield from _leaves(p)
    elif node.message is not None:
        yield from _leaves(node.message)
    else:
        yield node


def _needs_encoding(raw: bytes, node: BodyPart) -> bool:
    return node.encoding == "binary" or b"\x00" in raw[node.body_start : node.end]


def _base64(data: bytes) -> bytes:
    text = base64.b64encode(data)
    lines = [text[i : i + _LINE] for i in range(0, len(text), _LINE)]
    return b"\r\n".join(lines)


def encode_binary_parts(raw: bytes, meta: MessageMeta) -> bytes:
    """`raw` with every binary leaf part re-encoded as base64; `raw` itself when none
    needs it. Multipart and message/rfc822 containers are never encoded (RFC 2045 §6.4)."""
    todo = [n for n in _leaves(meta.body) if _needs_encoding(raw, n)]
    if not todo:
        return raw
    out = raw
    # From the last part to the first, so the offsets of those left stay valid.
    for node in sorted(todo, key=lambda n: n.header_start, reverse=True):
        body = out[node.body_start : node.end]
        encoded = _base64(body)
        if node.end == len(out):
            encoded += b"\r\n"  # inside a multipart, the boundary brings its own CRLF
        fields_end, _ = header_end(out, node.header_start, node.end)
        header = out[node.header_start : node.body_start]
        cte = [
            (start - node.header_start, stop - node.header_start)
            for name, start, _, stop in iter_fields(out, node.header_start, fields_end)
            if name == b"content-transfer-encoding"
        ]
        field = b"Content-Transfer-Encoding: base64\r\n"
        if cte:
            a, b = cte[0]
            header = header[:a] + field + header[b:]
        else:
            header = field + header
        out = out[: node.header_start] + header + encoded + out[node.end :]
    return out
