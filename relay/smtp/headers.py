"""A message's header block as raw lines (pure).

The submission server adds or replaces a few fields (Sender, Message-ID, Date, From)
and must leave every other header byte for byte (the X-MSS-* headers travel unchanged,
MSSANTE.md). So fields are kept as their original bytes, folded lines included.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass, field

# The address fields practice software writes: `addr`, `<addr>` or `Display Name
# <addr>`, a dot-atom addr-spec with a letters-digits-hyphens domain and a display name
# of plain words. For these the standard library's parser (a character-by-character
# walk, about 20 us a field) gives exactly the addr-spec: tests/smtp/test_headers.py
# holds the two to the same answers. Anything else (quotes, comments, groups, encoded
# words, a list, obsolete routes) goes to that parser.
# RFC 5322 §3.2.3 atext, a dot-atom of it, and a domain of letters, digits and
# hyphens: the plain forms, here and in relay.smtp.session's MAIL/RCPT paths.
_ATEXT_CHARS = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
DOT_ATOM = rf"[{_ATEXT_CHARS}]+(?:\.[{_ATEXT_CHARS}]+)*"
LDH_DOMAIN = r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_ADDR_SPEC = rf"{DOT_ATOM}@{LDH_DOMAIN}"
_PLAIN_ADDRESS = re.compile(rf"(?:(?:[.{_ATEXT_CHARS}]+ )*<({_ADDR_SPEC})>|({_ADDR_SPEC}))\Z")


@dataclass
class HeaderBlock:
    fields: list[bytes] = field(default_factory=list)  # each field with its CRLF(s)
    # From the blank line on (included): a view into the parsed buffer, not a copy.
    body: bytes | memoryview = b""
    # How many bytes of the parsed buffer the fields took (before `body`).
    head_bytes: int = 0
    # Each field's lower-cased name, in `fields` order: made once (the submission
    # checks ask for eight fields), dropped by `add` and `replace`.
    _names: list[bytes] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def parse(cls, raw: bytes | bytearray) -> HeaderBlock:
        end = raw.find(b"\r\n\r\n")
        if raw.startswith(b"\r\n"):
            return cls([], memoryview(raw), 0)
        if end < 0:
            head, body = bytes(raw), memoryview(b"")
            if head and not head.endswith(b"\r\n"):
                head += b"\r\n"
        else:
            head, body = bytes(raw[: end + 2]), memoryview(raw)[end + 2 :]
        fields: list[bytes] = []
        for line in head.split(b"\r\n")[:-1]:
            if line[:1] in (b" ", b"\t") and fields:
                fields[-1] += line + b"\r\n"  # RFC 5322 §2.2.3 folding
            else:
                fields.append(line + b"\r\n")
        return cls(fields, body if body else b"\r\n", len(raw) if end < 0 else end + 2)

    @staticmethod
    def _name(f: bytes) -> bytes:
        return f.split(b":", 1)[0].strip().lower()

    def _field_names(self) -> list[bytes]:
        if self._names is None:
            self._names = [self._name(f) for f in self.fields]
        return self._names

    def values(self, name: str) -> list[str]:
        key = name.lower().encode()
        out: list[str] = []
        for f, found in zip(self.fields, self._field_names(), strict=True):
            if found == key:
                value = f.split(b":", 1)[1] if b":" in f else b""
                text = value.decode("utf-8", "surrogateescape")
                out.append(" ".join(text.split()))
        return out

    def has(self, name: str) -> bool:
        return bool(self.values(name))

    def addresses(self, name: str) -> list[str]:
        """Lower-cased addr-specs of every address in every `name` field."""
        return addr_specs(self.values(name))

    def add(self, name: str, value: str) -> None:
        self.fields.append(f"{name}: {value}\r\n".encode())
        self._names = None

    def replace(self, name: str, value: str) -> None:
        key = name.lower().encode()
        self.fields = [f for f in self.fields if self._name(f) != key]
        self.add(name, value)

    def render(self) -> bytes:
        return b"".join(self.fields)

    def render_into(self, raw: bytearray) -> bytearray:
        """`render() + body` made in `raw`, the buffer `parse` read: its header block
        replaced in place, the body left where it is (a 25 MB message is not copied).
        The view on `raw` is released: `body` is empty after."""
        # not a view into `raw`: the blank line `parse` added (there was none)
        added = b"" if isinstance(self.body, memoryview) else self.body
        if isinstance(self.body, memoryview):
            self.body.release()  # or `raw` could not change size
        self.body = b""
        raw[: self.head_bytes] = self.render()
        raw += added
        return raw


def addr_specs(values: list[str]) -> list[str]:
    """The lower-cased addr-spec of every address in these field values (unfolded, as
    `HeaderBlock.values` gives them): what `email.utils.getaddresses` finds, with the
    plain forms read by one match each instead."""
    plain = [_PLAIN_ADDRESS.match(value) for value in values]
    if all(plain):
        return [(m.group(1) or m.group(2)).lower() for m in plain if m is not None]
    return [addr.lower() for _, addr in email.utils.getaddresses(values) if addr]
