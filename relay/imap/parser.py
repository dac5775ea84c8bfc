"""Sans-IO IMAP command parser (RFC 3501 §9 and the extensions in `commands`).

Two layers, no I/O:

* `CommandReader` frames the byte stream into commands: lines, synchronizing literals
  (``{n}``: the edge must send ``+ Ready``, RFC 3501 §7.5), non-synchronizing ones
  (``{n+}``, LITERAL+, RFC 7888) and literal8 (``~{n}``, RFC 3516); it enforces the
  line and literal size limits and resynchronises after an error.
* `parse_command` turns one complete command (literals inlined, as on the wire) into a
  `commands.Command`.

Like h11, input never raises: every outcome is an event (`Command`, `NeedContinuation`,
`NeedData`) or a `ParseFailure` whose message is safe to send to the client (it says
what was expected and never echoes client bytes or Python exception text).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, TypeVar

from relay.imap import commands as c

# ------------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class NeedData:
    """Nothing complete is buffered: read more from the socket and `feed` it."""


@dataclass(frozen=True, slots=True)
class NeedContinuation:
    """A synchronizing literal of ``size`` octets was announced: send ``+ Ready``."""

    size: int


class FailureKind(enum.Enum):
    """Why a command was rejected; `ParseFailure.status` / `.code` give the answer."""

    SYNTAX = "syntax"  # BAD
    UNKNOWN_COMMAND = "unknown-command"  # BAD
    LINE_TOO_LONG = "line-too-long"  # BAD; the edge may disconnect
    COMMAND_TOO_LONG = "command-too-long"  # BAD; lines + literals over the bound
    LITERAL_TOO_BIG = "literal-too-big"  # NO [TOOBIG] (RFC 4469 §5, RFC 7889)
    BAD_CHARSET = "bad-charset"  # NO [BADCHARSET] (RFC 3501 §6.4.4)


@dataclass(frozen=True, slots=True)
class ParseFailure:
    """A rejected command. ``tag`` is None when no tag could be read (answer ``* BAD``).

    ``message`` is fixed text chosen by the parser, safe to send as response text.
    """

    tag: str | None
    kind: FailureKind
    message: str

    @property
    def status(self) -> Literal["BAD", "NO"]:
        """The tagged status to answer with."""
        if self.kind in (FailureKind.LITERAL_TOO_BIG, FailureKind.BAD_CHARSET):
            return "NO"
        return "BAD"

    @property
    def code(self) -> str | None:
        """The response code to put in brackets, if any."""
        if self.kind is FailureKind.LITERAL_TOO_BIG:
            return "TOOBIG"
        if self.kind is FailureKind.BAD_CHARSET:
            return "BADCHARSET"
        return None


Event: TypeAlias = c.Command | NeedContinuation | NeedData | ParseFailure

NEED_DATA: Final = NeedData()


# ------------------------------------------------------------------------------ reader

_CRLF: Final = b"\r\n"
# Literal announcement at the end of a line: "{n}", "{n+}", "~{n}" (RFC 3501 §4.3,
# RFC 7888 §3, RFC 3516 §4.1). At most 10 digits: number is 32-bit (RFC 3501 §9).
_LITERAL_END: Final = re.compile(rb"~?\{([0-9]{1,20})(\+?)\}\r\n\Z")
_TAG_PREFIX: Final = re.compile(rb"([^\x00-\x20\x7f-\xff(){%*\"\\+]+)[ \r]")


def _tag_of(data: bytes | bytearray) -> str | None:
    m = _TAG_PREFIX.match(data)
    return m.group(1).decode("ascii") if m else None


class CommandReader:
    """Incremental command framer for one connection.

    Call `feed` with what the socket gave, then `next_event` until it returns
    `NeedData` (several pipelined commands may be buffered). After an `Authenticate`
    or `Idle` command, take the client's raw lines with `read_line` instead.

    ``max_line_bytes`` bounds each line including CRLF (RFC 7162 §4 asks servers to
    accept at least 8192); ``max_literal_bytes`` bounds each literal;
    ``max_command_bytes`` bounds a whole command (lines and literals), by default
    ``max_literal_bytes + 8 * max_line_bytes``. Memory use stays within these.
    """

    def __init__(
        self,
        max_line_bytes: int,
        max_literal_bytes: int,
        literal_plus: bool = True,
        max_command_bytes: int | None = None,
    ) -> None:
        if max_line_bytes < 16 or max_literal_bytes < 0:
            raise ValueError("limits too small")
        self._max_line = max_line_bytes
        self._max_literal = max_literal_bytes
        self._literal_plus = literal_plus
        self._max_command = (
            max_command_bytes
            if max_command_bytes is not None
            else max_literal_bytes + 8 * max_line_bytes
        )
        self._buf = bytearray()
        self._scan = 0  # where to resume looking for CRLF in _buf
        self._cmd = bytearray()  # the command being assembled (wire form)
        self._literal = 0  # literal octets still to copy into _cmd
        self._discard = 0  # octets still to throw away (rejected {n+} literal)
        self._skip_line = False  # throwing away the rest of an over-long line
        self._skip_command = False  # throwing away the rest of a rejected command

    def feed(self, data: bytes) -> None:
        """Append bytes received from the client."""
        self._buf += data

    @property
    def buffered_bytes(self) -> int:
        """Octets received but not yet consumed (for the edge's own accounting)."""
        return len(self._buf)

    def discard_buffered(self) -> None:
        """Drop everything received but not consumed.

        Call right after answering STARTTLS: plaintext pipelined behind STARTTLS must
        not be executed as if it came over TLS (the command-injection class of
        CVE-2011-0411; RFC 3501 §6.2.1 has the client wait for the tagged OK).
        """
        self._buf.clear()
        self._scan = 0
        self._discard = 0
        self._skip_line = self._skip_command = False

    def next_event(self) -> Event:
        """The next event; `NeedData` when more input is needed."""
        while True:
            if self._literal:
                n = min(self._literal, len(self._buf))
                self._cmd += self._buf[:n]
                del self._buf[:n]
                self._literal -= n
                if self._literal:
                    return NEED_DATA
            line = self._next_line()
            if not isinstance(line, bytes):
                return line
            event = self._on_line(line)
            if event is not None:
                return event

    def read_line(self) -> bytes | ParseFailure | None:
        """The next raw line without its CRLF, or None until one is complete.

        For AUTHENTICATE client responses (RFC 3501 §6.2.2) and IDLE's ``DONE``
        (RFC 2177). Only valid between commands (raises RuntimeError otherwise: a
        programming error, not an input one). An over-long line gives a
        `ParseFailure` (LINE_TOO_LONG) and is skipped.
        """
        if self._cmd or self._literal:
            raise RuntimeError("read_line() called in the middle of a command")
        line = self._next_line()
        if isinstance(line, NeedData):
            return None
        return line if isinstance(line, ParseFailure) else line[:-2]

    # -- internals

    def _next_line(self) -> bytes | NeedData | ParseFailure:
        """The next line with its CRLF, after whatever must be thrown away."""
        while True:
            if self._discard:
                n = min(self._discard, len(self._buf))
                del self._buf[:n]
                self._discard -= n
                if self._discard:
                    return NEED_DATA
            line = self._take_line()
            if not isinstance(line, bytes) or not self._skip_command:
                return line
            # Rest of a rejected command: swallow further {n+} literals too
            # (RFC 7888 §4); a {n} one is never answered, so the client gives up.
            m = _LITERAL_END.search(line)
            if m and m.group(2):
                self._discard = int(m.group(1))
            else:
                self._skip_command = False

    def _take_line(self) -> bytes | NeedData | ParseFailure:
        """One line with its CRLF, honouring the line limit and over-long skipping."""
        while True:
            idx = self._buf.find(_CRLF, max(0, self._scan - 1))
            if idx < 0:
                if self._skip_line or len(self._buf) >= self._max_line:
                    # Keep a trailing CR: it may start the CRLF that ends the line.
                    keep = 1 if self._buf.endswith(b"\r") else 0
                    failure = None if self._skip_line else self._line_too_long()
                    del self._buf[: len(self._buf) - keep]
                    self._scan = keep
                    self._skip_line = True
                    return failure or NEED_DATA
                self._scan = len(self._buf)
                return NEED_DATA
            end = idx + 2
            line = bytes(self._buf[:end])
            del self._buf[:end]
            self._scan = 0
            if self._skip_line:
                self._skip_line = False
                continue
            if len(line) > self._max_line:
                return self._line_too_long(line)
            return line

    def _line_too_long(self, line: bytes | None = None) -> ParseFailure:
        # Look only at the first max_line octets so the result does not depend on
        # how the line was split into reads.
        head = self._cmd or (self._buf if line is None else line)
        tag = _tag_of(bytes(head[: self._max_line]))
        self._reset_command()
        return ParseFailure(tag, FailureKind.LINE_TOO_LONG, "Line too long")

    def _reset_command(self) -> None:
        self._cmd.clear()
        self._literal = 0

    def _on_line(self, line: bytes) -> Event | None:
        """Add a complete line to the command; an event, or None to keep reading."""
        self._cmd += line
        m = _LITERAL_END.search(line) if line.endswith(b"}\r\n") else None
        if len(self._cmd) > self._max_command:
            return self._reject(m, FailureKind.COMMAND_TOO_LONG, "Command too long")
        if m is None:
            data = bytes(self._cmd)
            self._reset_command()
            return parse_command(data)
        size = int(m.group(1))
        non_sync = bool(m.group(2))
        if non_sync and not self._literal_plus:
            return self._reject(
                m, FailureKind.SYNTAX, "Non-synchronizing literals are not supported"
            )
        if size > self._max_literal:
            return self._reject(m, FailureKind.LITERAL_TOO_BIG, "Literal too big")
        if len(self._cmd) + size > self._max_command:
            return self._reject(m, FailureKind.COMMAND_TOO_LONG, "Command too long")
        self._literal = size
        # A synchronizing literal, even {0}, waits for "+" (RFC 3501 §7.5).
        return None if non_sync else NeedContinuation(size)

    def _reject(self, m: re.Match[bytes] | None, kind: FailureKind, message: str) -> ParseFailure:
        tag = _tag_of(self._cmd)
        self._reset_command()
        if m is not None and m.group(2):
            # The client sends a {n+} literal and the rest of the command without
            # waiting: swallow them (RFC 7888 §4). A rejected {n} literal is never
            # sent, as no "+" was given.
            self._discard = int(m.group(1))
            self._skip_command = True
        return ParseFailure(tag, kind, message)


# ----------------------------------------------------------------------------- grammar


class _Fail(Exception):
    """Internal: a syntax error at the cursor; becomes a `ParseFailure`."""

    def __init__(self, message: str, kind: FailureKind = FailureKind.SYNTAX) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


# RFC 3501 §9: ATOM-CHAR is any CHAR except atom-specials
# ( "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials / resp-specials ).
_ATOM: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
_ASTRING_CHARS: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\]+')  # + "]"
_LIST_CHARS: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){"\\]+')  # + "%" "*" "]"
_TAG: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')  # astring chars but "+"
# quoted = DQUOTE *QUOTED-CHAR DQUOTE; 8-bit allowed for UTF-8 (RFC 6855 §3, RFC 9051).
_QUOTED: Final = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_QUOTED_ESCAPE: Final = re.compile(rb"\\([\"\\])")
_LITERAL: Final = re.compile(rb"(~?)\{([0-9]{1,10})(\+?)\}\r\n")
_NUMBER: Final = re.compile(rb"[0-9]+")
_SEQ_SET: Final = re.compile(
    rb"(?:[0-9]+|\*)(?::(?:[0-9]+|\*))?(?:,(?:[0-9]+|\*)(?::(?:[0-9]+|\*))?)*"
)
_FETCH_NAME: Final = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_PART: Final = re.compile(rb"[1-9][0-9]*(?:\.[1-9][0-9]*)*")
_DATE: Final = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
_DATE_TIME: Final = re.compile(
    rb'"([ 0-9]?[0-9])-([A-Za-z]{3})-([0-9]{4}) '
    rb'([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"'
)
_BASE64: Final = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_MONTHS: Final = {
    m: i + 1
    for i, m in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
    )
}
_MAX_NUMBER: Final = 2**32 - 1  # RFC 3501 §9 number
_MAX_MODSEQ: Final = 2**63 - 1  # RFC 7162 §7 mod-sequence-value
_MAX_DEPTH: Final = 32  # nesting of search keys; bounds recursion on hostile input
# RFC 3501 §2.3.2 system flags, canonical spelling (flags compare case-insensitively).
_SYSTEM_FLAGS: Final = {
    f.upper(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")
}
# RFC 6154 §2 special-use attributes.
_SPECIAL_USE: Final = {
    f.upper(): f
    for f in ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")
}
# SEARCH CHARSET values we decode (RFC 3501 §6.4.4 requires US-ASCII and UTF-8).
_CHARSETS: Final = {
    "US-ASCII": "ascii",
    "UTF-8": "utf-8",
    "ISO-8859-1": "latin-1",
    "ISO-8859-15": "iso8859-15",
    "WINDOWS-1252": "cp1252",
}
_ID_MAX_PAIRS: Final = 30  # RFC 2971 §3.3
_STORE_ITEM: Final = re.compile(rb"[+-]?FLAGS(?:\.SILENT)?", re.IGNORECASE)
_RIGHTS: Final = re.compile(r"[a-z0-9]*")
_T = TypeVar("_T")


class _Cursor:
    """Recursive-descent reader over one command's bytes (literals inlined)."""

    __slots__ = ("buf", "charset", "depth", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0
        self.depth = 0
        self.charset = "utf-8"

    # -- basics

    def peek(self) -> int:
        """The next byte, or -1 at the end."""
        return self.buf[self.pos] if self.pos < len(self.buf) else -1

    def at(self, token: bytes) -> bool:
        """Whether the input continues with ``token`` (case-insensitive)."""
        end = self.pos + len(token)
        return self.buf[self.pos : end].upper() == token

    def take(self, token: bytes, what: str) -> None:
        if not self.at(token):
            raise _Fail(f"Expected {what}")
        self.pos += len(token)

    def sp(self) -> None:
        self.take(b" ", "a space")

    def try_sp(self) -> bool:
        if self.peek() == 0x20:
            self.pos += 1
            return True
        return False

    def end(self) -> None:
        if not self.at_end():
            raise _Fail(
                "Unexpected extra arguments" if self.peek() == 0x20 else "Expected end of line"
            )

    def at_end(self) -> bool:
        return len(self.buf) - self.pos == 2 and self.buf.endswith(_CRLF)

    def match(self, pattern: re.Pattern[bytes], what: str) -> re.Match[bytes]:
        m = pattern.match(self.buf, self.pos)
        if m is None or m.end() == self.pos:
            raise _Fail(f"Expected {what}")
        self.pos = m.end()
        return m

    def delimited(self, what: str) -> None:
        """The token just read must be followed by SP, ")" or the end of line."""
        if self.peek() not in (0x20, 0x29, 0x0D):
            raise _Fail(f"Invalid {what}")

    # -- tokens

    def atom(self, what: str = "an atom") -> str:
        m = self.match(_ATOM, what)
        return m.group().decode("ascii")

    def keyword(self, what: str) -> str:
        """An atom, upper-cased (alphabetic characters are case-insensitive, RFC 3501 §9)."""
        return self.atom(what).upper()

    def number(
        self, what: str = "a number", *, nonzero: bool = False, limit: int = _MAX_NUMBER
    ) -> int:
        m = self.match(_NUMBER, what)
        digits = m.group()
        if len(digits) > 20 or int(digits) > limit or (nonzero and int(digits) == 0):
            raise _Fail(f"Invalid {what}")
        return int(digits)

    def string_bytes(self, *, binary_ok: bool = False, nul_ok: bool = False) -> tuple[bytes, bool]:
        """A quoted string or literal; returns the octets and whether it was ``~{}``.

        NUL is refused in a literal (RFC 3501 §9 CHAR8) unless ``nul_ok`` or binary.
        """
        ch = self.peek()
        if ch == 0x22:
            m = self.match(_QUOTED, "a quoted string")
            return _QUOTED_ESCAPE.sub(rb"\1", m.group(1)), False
        if ch in (0x7B, 0x7E):
            m = self.match(_LITERAL, "a literal")
            binary = bool(m.group(1))
            if binary and not binary_ok:
                raise _Fail("Binary literal not allowed here")
            size = int(m.group(2))
            end = self.pos + size
            if end > len(self.buf):
                raise _Fail("Literal data is missing")
            data = self.buf[self.pos : end]
            self.pos = end
            if not (binary or nul_ok) and b"\x00" in data:
                raise _Fail("NUL not allowed in a string")
            return data, binary
        raise _Fail("Expected a string")

    def string(self) -> str:
        data, _ = self.string_bytes()
        return self.decode(data, "utf-8")

    def astring_bytes(self, *, lenient: bool = False) -> bytes:
        if self.peek() in (0x22, 0x7B):
            return self.string_bytes()[0]
        return self.match(_LIST_CHARS if lenient else _ASTRING_CHARS, "a string").group()

    def astring(self, what: str = "a string", *, lenient: bool = False) -> str:
        try:
            return self.decode(self.astring_bytes(lenient=lenient), "utf-8")
        except _Fail as e:
            if e.message == "Expected a string":
                raise _Fail(f"Expected {what}") from None
            raise

    def nstring(self) -> str | None:
        if self.at(b"NIL") and self._nil_ends():
            self.pos += 3
            return None
        return self.string()

    def _nil_ends(self) -> bool:
        nxt = self.buf[self.pos + 3 : self.pos + 4]
        return nxt in (b" ", b")", b"\r", b"")

    @staticmethod
    def decode(data: bytes, codec: str) -> str:
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            raise _Fail("Invalid characters in a string") from None

    def mailbox(self) -> str:
        """RFC 3501 §9 mailbox: ``INBOX`` in any case is INBOX (§5.1)."""
        name = self.astring("a mailbox name")
        return "INBOX" if name.upper() == "INBOX" else name

    def list_mailbox(self) -> str:
        """RFC 3501 §9 list-mailbox: like astring but also ``%``, ``*``."""
        if self.peek() in (0x22, 0x7B):
            return self.string()
        return self.match(_LIST_CHARS, "a mailbox pattern").group().decode("ascii")

    def sequence_set(self) -> c.SequenceSet:
        """RFC 3501 §9 sequence-set, or ``$`` (RFC 5182 §2.1)."""
        if self.peek() == 0x24:
            self.pos += 1
            self.delimited("sequence set")
            return c.SequenceSet(saved=True)
        m = self.match(_SEQ_SET, "a sequence set")
        self.delimited("sequence set")
        ranges = []
        for item in m.group().split(b","):
            start, _, stop = item.partition(b":")
            a = _seq_number(start)
            b = _seq_number(stop) if stop else a
            ranges.append(c.SeqRange(a, b))
        return c.SequenceSet(tuple(ranges))

    def flag(self, *, allow_recent: bool = True) -> str:
        """RFC 3501 §9 flag: a system flag, ``\\atom`` extension or keyword.

        ``allow_recent=False`` is for flags to store (STORE, APPEND): there only the
        five settable system flags and keywords are taken; ``\\Recent`` (§2.3.2: not
        alterable by the client) and unknown ``\\`` flags such as ``\\Bogus`` (§9
        flag-extension is future expansion, not something we keep) get BAD, as Dovecot
        answers.
        """
        if self.peek() == 0x5C:
            self.pos += 1
            name = "\\" + self.atom("a flag")
            canonical = _SYSTEM_FLAGS.get(name.upper(), name)
            if canonical == "\\Recent" and not allow_recent:
                raise _Fail("\\Recent cannot be set")
            if canonical not in _SYSTEM_FLAGS.values() and not allow_recent:
                raise _Fail("Unknown system flag")
            return canonical
        return self.atom("a flag")

    def flag_list(self) -> tuple[str, ...]:
        self.take(b"(", "a flag list")
        flags: list[str] = []
        if self.peek() != 0x29:
            flags.append(self.flag(allow_recent=False))
            while self.try_sp():
                flags.append(self.flag(allow_recent=False))
        self.take(b")", "')' after the flags")
        return tuple(flags)

    def paren_list(self, item: Callable[[], _T], what: str, *, empty_ok: bool = False) -> list[_T]:
        """``"(" item *(SP item) ")"``."""
        self.take(b"(", f"'(' before {what}")
        items: list[_T] = []
        if self.peek() == 0x29 and empty_ok:
            self.pos += 1
            return items
        items.append(item())
        while self.try_sp():
            items.append(item())
        self.take(b")", f"')' after {what}")
        return items

    def date(self) -> dt.date:
        """RFC 3501 §9 date: ``d-Mon-yyyy``, optionally in double quotes."""
        quoted = self.peek() == 0x22
        if quoted:
            self.pos += 1
        m = self.match(_DATE, "a date (d-Mon-yyyy)")
        if quoted:
            self.take(b'"', "a date (d-Mon-yyyy)")
        self.delimited("date")
        month = _MONTHS.get(m.group(2).decode("ascii").upper())
        try:
            if month is None:
                raise ValueError
            return dt.date(int(m.group(3)), month, int(m.group(1)))
        except ValueError:
            raise _Fail("Invalid date") from None

    def date_time(self) -> dt.datetime:
        """RFC 3501 §9 date-time: ``"dd-Mon-yyyy hh:mm:ss +zzzz"``."""
        m = self.match(_DATE_TIME, "a date-time")
        day, mon, year, hh, mm, ss, sign, zh, zm = (g.decode("ascii") for g in m.groups())
        month = _MONTHS.get(mon.upper())
        try:
            if month is None or int(zh) > 23 or int(zm) > 59:
                raise ValueError
            offset = dt.timedelta(hours=int(zh), minutes=int(zm))
            zone = dt.timezone(-offset if sign == "-" else offset)
            return dt.datetime(
                int(year), month, int(day.strip()), int(hh), int(mm), int(ss), tzinfo=zone
            )
        except ValueError:
            raise _Fail("Invalid date-time") from None


def _seq_number(token: bytes) -> int | None:
    if token == b"*":
        return None
    if token.startswith(b"0") or len(token) > 10 or int(token) > _MAX_NUMBER:
        raise _Fail("Invalid number in sequence set")
    return int(token)


# ---------------------------------------------------------------------------- commands

_Handler: TypeAlias = Callable[[_Cursor, str], c.Command]


def _no_args(cls: type[c.Command]) -> _Handler:
    def parse(cur: _Cursor, tag: str) -> c.Command:
        cur.end()
        return cls(tag=tag)

    return parse


def _authenticate(cur: _Cursor, tag: str) -> c.Command:
    cur.sp()
    mechanism = cur.keyword("a SASL mechanism")
    initial: bytes | None = None
    if cur.try_sp():
        # RFC 4959 §7: initial-response = base64 / "="
        if cur.at(b"=") and cur.buf[cur.pos + 1 : cur.pos + 2] == b"\r":
            cur.pos += 1
            initial = b""
        else:
            initial = _b64(cur.match(_BASE64, "a base64 initial response").group())
    cur.end()
    return c.Authenticate(tag=tag, mechanism=mechanism, initial_response=initial)


def _b64(data: bytes) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error:
        raise _Fail("Invalid base64") from None


def _login(cur: _Cursor, tag: str) -> c.Command:
    # userid and password are astrings (RFC 3501 §9), which exclude "*" and "%".
    # We also take those unquoted: the "person*box" login form (DESIGN.md) would
    # otherwise fail with clients that do not quote, as Dovecot is lenient too.
    cur.sp()
    user = cur.astring("a user name", lenient=True)
    cur.sp()
    password = cur.astring("a password", lenient=True)
    cur.end()
    return c.Login(tag=tag, username=user, password=password)


def _id(cur: _Cursor, tag: str) -> c.Command:
    cur.sp()
    if cur.at(b"NIL"):
        cur.pos += 3
        cur.end()
        return c.Id(tag=tag, params=None)

    def pair() -> tuple[str, str | None]:
        key = cur.string()
        cur.sp()
        return key, cur.nstring()

    pairs = cur.paren_list(pair, "ID parameters")
    if len(pairs) > _ID_MAX_PAIRS:
        raise _Fail("Too many ID parameters")
    cur.end()
    return c.Id(tag=tag, params=tuple(pairs))


def _enable(cur: _Cursor, tag: str) -> c.Command:
    caps = []
    while cur.try_sp():
        caps.append(cur.keyword("a capability name"))
    if not caps:
        raise _Fail("Expected a capability name")
    cur.end()
    return c.Enable(tag=tag, capabilities=tuple(caps))


def _select_like(cls: type[c.Select] | type[c.Examine]) -> _Handler:
    def parse(cur: _Cursor, tag: str) -> c.Command:
        cur.sp()
        mailbox = cur.mailbox()
        condstore = False
        qresync: c.Qresync | None = None
        if cur.try_sp():
            # RFC 4466 §2.1 select-params: CONDSTORE (RFC 7162 §3.1.8), QRESYNC (§3.2.5).
            def param() -> None:
                nonlocal condstore, qresync
                word = cur.keyword("a select parameter")
                if word == "CONDSTORE":
                    condstore = True
                elif word == "QRESYNC" and qresync is None:
                    cur.sp()
                    qresync = _qresync(cur)
                else:
                    raise _Fail("Unknown select parameter")

            cur.paren_list(param, "parameters")
        cur.end()
        return cls(tag=tag, mailbox=mailbox, condstore=condstore, qresync=qresync)

    return parse


def _qresync(cur: _Cursor) -> c.Qresync:
    # RFC 7162 §7: "(" uidvalidity SP mod-sequence-value [SP known-uids]
    #              [SP seq-match-data] ")"
    # seq-match-data = "(" known-sequence-set SP known-uid-set ")"
    cur.take(b"(", "'(' before the QRESYNC values")
    uidvalidity = cur.number("a UIDVALIDITY", nonzero=True)
    cur.sp()
    modseq = cur.number("a mod-sequence", nonzero=True, limit=_MAX_MODSEQ)
    known: c.SequenceSet | None = None
    match: tuple[c.SequenceSet, c.SequenceSet] | None = None
    if cur.try_sp() and cur.peek() != 0x28:
        known = _uid_set(cur)
        cur.try_sp()
    if cur.peek() == 0x28:
        cur.pos += 1
        numbers = _uid_set(cur)
        cur.sp()
        uids = _uid_set(cur)
        cur.take(b")", "')' after the sequence match data")
        match = (numbers, uids)
    cur.take(b")", "')' after the QRESYNC values")
    return c.Qresync(uidvalidity, modseq, known, match)


def _uid_set(cur: _Cursor) -> c.SequenceSet:
    # RFC 7162 §7 known-uids / known-*-set: a sequence-set without "$" (RFC 5182).
    if cur.peek() == 0x24:
        raise _Fail("Expected a UID set")
    return cur.sequence_set()


def _create(cur: _Cursor, tag: str) -> c.Command:
    cur.sp()
    mailbox = cur.mailbox()
    uses: list[str] = []
    if cur.try_sp():
        # RFC 4466 §2.2 create-params; RFC 6154 §3 "USE" (use-attr list).
        def param() -> None:
            if cur.keyword("a create parameter") != "USE":
                raise _Fail("Unknown create parameter")
            cur.sp()
            uses.extend(cur.paren_list(_special_use(cur), "special-use attributes"))

        cur.paren_list(param, "parameters")
    cur.end()
    return c.Create(tag=tag, mailbox=mailbox, special_use=tuple(uses))


def _special_use(cur: _Cursor) -> Callable[[], str]:
    def item() -> str:
        cur.take(b"\\", "a special-use attribute")
        name = "\\" + cur.atom("a special-use attribute")
        return _SPECIAL_USE.get(name.upper(), name)

    return item


def _mailbox_only(cls: Callable[..., c.Command]) -> _Handler:
    def parse(cur: _Cursor, tag: str) -> c.Command:
        cur.sp()
        mailbox = cur.mailbox()
        cur.end()
        return cls(tag=tag, mailbox=mailbox)

    return parse


def _mailbox_identifier(cls: Callable[..., c.Command]) -> _Handler:
    def parse(cur: _Cursor, tag: str) -> c.Command:
        cur.sp()
        mailbox = cur.mailbox()
        cur.sp()
        identifier = cur.astring("an identifier")
        cur.end()
        return cls(tag=tag, mailbox=mailbox, identifier=identifier)

    return parse


def _rename(cur: _Cursor, tag: str) -> c.Command:
    cur.sp()
    source = cur.mailbox()
    cur.sp()
    destination = cur.mailbox()
    cur.end()
    return c.Rename(tag=tag, source=source, destination=destination)


def _status_attr(cur: _Cursor) -> Callable[[], c.StatusAttr]:
    def item() -> c.StatusAttr:
        word = cur.keyword("a status item")
        try:
            return c.StatusAttr(word)
        except ValueError:
            raise _Fail("Unknown status item") from None

    return item


def _list(cur: _Cursor, tag: str) -> c.Command:
    # RFC 5258 §6: "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat
    #                     [SP list-return-opts]
    cur.sp()
    selection: set[c.ListSelect] = set()
    if cur.peek() == 0x28:

        def select_opt() -> c.ListSelect:
            word = cur.keyword("a selection option")
            try:
                return c.ListSelect(word)
            except ValueError:
                # RFC 5258 §3: unrecognised selection options get BAD.
                raise _Fail("Unknown LIST selection option") from None

        selection.update(cur.paren_list(select_opt, "selection options", empty_ok=True))
        if selection - {c.ListSelect.REMOTE} == {c.ListSelect.RECURSIVEMATCH}:
            # RFC 5258 §3.1: RECURSIVEMATCH needs another selection option than REMOTE.
            raise _Fail("RECURSIVEMATCH needs another selection option")
        cur.sp()
    reference = cur.mailbox()
    cur.sp()
    if cur.peek() == 0x28:
        patterns = tuple(cur.paren_list(cur.list_mailbox, "mailbox patterns"))
    else:
        patterns = (cur.list_mailbox(),)
    options: set[c.ListReturn] = set()
    status: tuple[c.StatusAttr, ...] | None = None
    if cur.try_sp():
        cur.take(b"RETURN", "RETURN")
        cur.sp()

        def return_opt() -> None:
            nonlocal status
            word = cur.keyword("a return option")
            if word == "STATUS":
                # RFC 5819 §2
                cur.sp()
                status = tuple(cur.paren_list(_status_attr(cur), "status items"))
                return
            try:
                options.add(c.ListReturn(word))
            except ValueError:
                raise _Fail("Unknown LIST return option") from None

        cur.paren_list(return_opt, "return options", empty_ok=True)
    cur.end()
    return c.List(
        tag=tag,
        reference=reference,
        patterns=patterns,
        selection=frozenset(selection),
        return_options=frozenset(options),
        return_status=status,
    )


def _lsub(cur: _Cursor, tag: str) -> c.Command:
    cur.sp()
    reference = cur.mailbox()
    cur.sp()
    pattern = cur.list_mailbox()
    cur.end()
    return c.Lsub(tag=tag, reference=reference, pattern=pattern)


def _status(cur: _Cursor, tag: str) -> c.Command:
    cur.sp()
    mailbox = cur.mailbox()
    cur.sp()
    attrs = tuple(cur.paren_list(_status_attr(cur), "status items"))
    cur.end()
    return c.Status(tag=tag, mailbox=mailbox, attributes=attrs)


def _append(cur: _Cursor, tag: str) -> c.Command:
    # RFC 3501 §9 / RFC 4466 §2.3 / RFC 3502 (MULTIAPPEND) / RFC 4469 (CATENATE):
    # "APPEND" SP mailbox 1*(SP [flag-list SP] [date-time SP] append-data)
    cur.sp()
    mailbox = cur.mailbox()
    messages: list[c.AppendMessage] = []
    while not messages or not cur.at_end():
        cur.sp()
        messages.append(_append_message(cur))
    cur.end()
    first = messages[0]
    if len(messages) == 1 and len(first.parts) == 1 and isinstance(first.parts[0], bytes):
        return c.Append(
            tag=tag,
            mailbox=mailbox,
            flags=first.flags,
            internal_date=first.internal_date,
            message=first.parts[0],
            binary=first.binary,
        )
    return c.AppendMany(tag=tag, mailbox=mailbox, messages=tuple(messages))


def _append_message(cur: _Cursor) -> c.AppendMessage:
    flags: tuple[str, ...] = ()
    when: dt.datetime | None = None
    if cur.peek() == 0x28:
        flags = cur.flag_list()
        cur.sp()
    if cur.peek() == 0x22:
        when = cur.date_time()
        cur.sp()
    if cur.at(b"CATENATE "):
        # RFC 4469 §5: "CATENATE" SP "(" cat-part *(SP cat-part) ")"
        cur.pos += len(b"CATENATE ")
        binary = False

        def part() -> bytes | c.CatenateUrl:
            nonlocal binary
            word = cur.keyword("TEXT or URL")
            if word not in ("TEXT", "URL"):
                raise _Fail("Expected TEXT or URL")
            cur.sp()
            if word == "URL":
                return c.CatenateUrl(cur.astring("a URL"))
            data, is_binary = _message_literal(cur)
            binary = binary or is_binary
            return data

        parts = tuple(cur.paren_list(part, "catenate parts"))
        return c.AppendMessage(flags, when, parts, binary)
    data, binary = _message_literal(cur)
    return c.AppendMessage(flags, when, (data,), binary)


def _message_literal(cur: _Cursor) -> tuple[bytes, bool]:
    if cur.peek() not in (0x7B, 0x7E):
        raise _Fail("Expected the message as a literal")
    # NUL is tolerated in a plain literal here: the octets are stored as they are.
    return cur.string_bytes(binary_ok=True, nul_ok=True)


def _expunge(cur: _Cursor, tag: str) -> c.Command:
    cur.end()
    return c.Expunge(tag=tag)


def _uid_expunge(cur: _Cursor, tag: str) -> c.Command:
    # RFC 4315 §2.1
    cur.sp()
    uids = cur.sequence_set()
    cur.end()
    return c.Expunge(tag=tag, uids=uids)


# -- SEARCH (RFC 3501 §6.4.4)

_FLAG_KEYS: Final = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "RECENT": ("\\Recent", True),
    "OLD": ("\\Recent", False),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_HEADER_KEYS: Final = frozenset({"BCC", "CC", "FROM", "SUBJECT", "TO"})
_DATE_KEYS: Final = {
    "BEFORE": (c.DateField.INTERNAL, c.DateOp.BEFORE),
    "ON": (c.DateField.INTERNAL, c.DateOp.ON),
    "SINCE": (c.DateField.INTERNAL, c.DateOp.SINCE),
    "SENTBEFORE": (c.DateField.SENT, c.DateOp.BEFORE),
    "SENTON": (c.DateField.SENT, c.DateOp.ON),
    "SENTSINCE": (c.DateField.SENT, c.DateOp.SINCE),
}
_KEYS_WITH_ARGUMENTS: Final = frozenset(
    {"KEYWORD", "UNKEYWORD", "HEADER", "BODY", "TEXT", "LARGER", "SMALLER", "UID", "NOT", "OR"}
    | {"MODSEQ"}
    | _HEADER_KEYS
    | _DATE_KEYS.keys()
)
_ENTRY_FLAG: Final = re.compile(r'/flags/(\\?[^\x00-\x20\x7f-\U0010ffff(){%*"\\\]]+)')


def _search_string(cur: _Cursor) -> str:
    return cur.decode(cur.astring_bytes(), cur.charset)


def _search_key(cur: _Cursor) -> c.SearchKey:
    cur.depth += 1
    if cur.depth > _MAX_DEPTH:
        raise _Fail("Search criteria nested too deeply")
    try:
        return _search_key_inner(cur)
    finally:
        cur.depth -= 1


def _search_key_inner(cur: _Cursor) -> c.SearchKey:
    ch = cur.peek()
    if ch == 0x28:
        keys = cur.paren_list(lambda: _search_key(cur), "search keys")
        return keys[0] if len(keys) == 1 else c.SearchAnd(tuple(keys))
    if ch in (0x24, 0x2A) or 0x30 <= ch <= 0x39:
        return c.SearchSequence(cur.sequence_set(), uid=False)
    word = cur.keyword("a search key")
    if word == "ALL":
        return c.SearchAll()
    if word in _FLAG_KEYS:
        flag, present = _FLAG_KEYS[word]
        return c.SearchFlag(flag, present)
    if word == "NEW":
        return c.SearchAnd((c.SearchFlag("\\Recent", True), c.SearchFlag("\\Seen", False)))
    if word not in _KEYS_WITH_ARGUMENTS:
        raise _Fail("Unknown search key")
    cur.sp()
    if word in ("KEYWORD", "UNKEYWORD"):
        return c.SearchFlag(cur.atom("a keyword"), word == "KEYWORD")
    if word in _HEADER_KEYS:
        return c.SearchHeader(word, _search_string(cur))
    if word == "HEADER":
        name = cur.astring("a header field name").upper()
        cur.sp()
        return c.SearchHeader(name, _search_string(cur))
    if word in ("BODY", "TEXT"):
        return c.SearchText(_search_string(cur), body_only=word == "BODY")
    if word in _DATE_KEYS:
        field, op = _DATE_KEYS[word]
        return c.SearchDate(field, op, cur.date())
    if word in ("LARGER", "SMALLER"):
        return c.SearchSize(word == "LARGER", cur.number("a size"))
    if word == "UID":
        return c.SearchSequence(cur.sequence_set(), uid=True)
    if word == "NOT":
        return c.SearchNot(_search_key(cur))
    if word == "OR":
        left = _search_key(cur)
        cur.sp()
        return c.SearchOr(left, _search_key(cur))
    if word == "MODSEQ":
        # RFC 7162 §3.1.5: "MODSEQ" [SP entry-name SP entry-type-req] SP modseq
        entry_flag: str | None = None
        entry_type: str | None = None
        if cur.peek() == 0x22:
            # entry-flag-name = DQUOTE "/flags/" attr-flag DQUOTE, a quoted string
            # whose backslash is itself escaped: "/flags/\\draft" (RFC 7162 §3.1.5).
            m = _ENTRY_FLAG.fullmatch(cur.string())
            if m is None:
                raise _Fail("Expected an entry name")
            entry_flag = _SYSTEM_FLAGS.get(m.group(1).upper(), m.group(1))
            cur.sp()
            entry_type = cur.keyword("an entry type").lower()
            if entry_type not in ("priv", "shared", "all"):
                raise _Fail("Expected priv, shared or all")
            cur.sp()
        modseq = cur.number("a mod-sequence", limit=_MAX_MODSEQ)
        return c.SearchModSeq(modseq, entry_flag, entry_type)
    raise _Fail("Unknown search key")


_Returns: TypeAlias = tuple[frozenset[c.SearchReturn] | None, tuple[int, int] | None]


def _search_return(cur: _Cursor) -> _Returns:
    # RFC 4731 §3.1 / RFC 4466 §2.6: SP "RETURN" SP "(" [opt *(SP opt)] ")"
    if not cur.at(b" RETURN "):
        return None, None
    cur.pos += len(b" RETURN ")
    partial: tuple[int, int] | None = None

    def opt() -> c.SearchReturn:
        nonlocal partial
        try:
            ret = c.SearchReturn(cur.keyword("a search return option"))
        except ValueError:
            raise _Fail("Unknown search return option") from None
        if ret is c.SearchReturn.PARTIAL:
            # RFC 5267 §4.4: "PARTIAL" SP partial-range ; partial-range = nz:nz
            cur.sp()
            low = cur.number("a partial range", nonzero=True)
            cur.take(b":", "':' in the partial range")
            high = cur.number("a partial range", nonzero=True)
            cur.delimited("partial range")
            partial = (min(low, high), max(low, high))
        return ret

    opts = frozenset(cur.paren_list(opt, "search return options", empty_ok=True))
    return opts or frozenset({c.SearchReturn.ALL}), partial  # RFC 4731 §3.1: () is ALL


def _charset(cur: _Cursor) -> str:
    """A SEARCH/SORT/THREAD charset we decode; sets the cursor's codec."""
    charset = cur.astring("a charset").upper()
    codec = _CHARSETS.get(charset)
    if codec is None:
        raise _Fail("Unsupported charset", FailureKind.BAD_CHARSET)
    cur.charset = codec
    return charset


def _search_keys(cur: _Cursor) -> c.SearchKey:
    """``1*(SP search-key)`` to the end of the command, as one key."""
    keys = [_search_key(cur)]
    while cur.try_sp():
        keys.append(_search_key(cur))
    cur.end()
    return keys[0] if len(keys) == 1 else c.SearchAnd(tuple(keys))


def _search(uid: bool) -> _Handler:
    def parse(cur: _Cursor, tag: str) -> c.Command:
        returns, partial = _search_return(cur)
        charset: str | None = None
        if cur.at_end():
            raise _Fail("Expected search criteria")
        cur.sp()
        if cur.at(b"CHARSET "):
            cur.pos += len(b"CHARSET ")
            charset = _charset(cur)
            cur.sp()
        criteria = _search_keys(cur)
        return c.Search(
            tag=tag,
            uid=uid,
            charset=charset,
            criteria=criteria,
            return_options=returns,
            partial=partial,
        )

    return parse


def _sort_criterion(cur: _Cursor) -> c.SortCriterion:
    # RFC 5256 §5: sort-criterion = ["REVERSE" SP] sort-key
    word = cur.keyword("a sort key")
    reverse = word == "REVERSE"
    if reverse:
        cur.sp()
        word = cur.keyword("a sort key")
    try:
        return c.SortCriterion(c.SortKey(word), reverse)
    except ValueError:
        raise _Fail("Unknown sort key") from None


def _sort(uid: bool) -> _Handler:
    def parse(cur: _Cursor, tag: str) -> c.Command:
        # RFC 5256 §5 / RFC 5267 §3: "SORT" [search-return-opts] SP sort-criteria
        # SP charset 1*(SP search-key)
        returns, partial = _search_return(cur)
        cur.sp()
        criteria = tuple(cur.paren_list(lambda: _sort_criterion(cur), "sort criteria"))
        cur.sp()
        charset = _charset(cur)
        cur.sp()
        return c.Sort(
            tag=tag,
            uid=uid,
            criteria=criteria,
            charset=charset,
            search=_search_keys(cur),
            return_options=returns,
            partial=partial,
        )

    return parse


def _thread(uid: bool) -> _Handler:
    def parse(cur: _Cursor, tag: str) -> c.Command:
        # RFC 5256 §5: "THREAD" SP thread-alg SP search-criteria
        cur.sp()
        try:
            algorithm = c.ThreadAlgorithm(cur.keyword("a thread algorithm"))
        except ValueError:
            raise _Fail("Unknown thread algorithm") from None
        cur.sp()
        charset = _charset(cur)
        cur.sp()
        return c.Thread(
            tag=tag, uid=uid, algorithm=algorithm, charset=charset, search=_search_keys(cur)
        )

    return parse


_NOTIFY_EVENTS: Final = {e.value.upper(): e for e in c.NotifyEvent}


def _notify_group(cur: _Cursor) -> c.NotifyGroup:
    # RFC 5465 §8: event-group = "(" filter-mailboxes SP events ")"
    cur.take(b"(", "'(' before an event group")
    try:
        kind = c.NotifyFilter(cur.keyword("a mailbox filter"))
    except ValueError:
        raise _Fail("Unknown mailbox filter") from None
    names: tuple[str, ...] = ()
    if kind in (c.NotifyFilter.SUBTREE, c.NotifyFilter.MAILBOXES):
        cur.sp()
        if cur.peek() == 0x28:
            names = tuple(cur.paren_list(cur.mailbox, "mailboxes"))
        else:
            names = (cur.mailbox(),)
    cur.sp()
    events: set[c.NotifyEvent] = set()
    unknown: list[str] = []
    fetch: tuple[c.FetchAttr, ...] = ()
    if cur.at(b"NONE") and cur.buf[cur.pos + 4 : cur.pos + 5] == b")":
        cur.pos += 4
    else:

        def event() -> None:
            nonlocal fetch
            word = cur.atom("an event")
            known = _NOTIFY_EVENTS.get(word.upper())
            if known is None:
                unknown.append(word)
                return
            events.add(known)
            if known is c.NotifyEvent.MESSAGE_NEW and cur.at(b" ("):
                cur.pos += 1
                fetch = tuple(cur.paren_list(lambda: _fetch_attr(cur), "fetch items"))

        cur.paren_list(event, "events")
    cur.take(b")", "')' after the event group")
    return c.NotifyGroup(kind, names, frozenset(events), fetch, tuple(unknown))


def _notify(cur: _Cursor, tag: str) -> c.Command:
    # RFC 5465 §8: "NOTIFY" SP ("NONE" / "SET" [SP "STATUS"] 1*(SP event-group))
    cur.sp()
    word = cur.keyword("NONE or SET")
    if word == "NONE":
        cur.end()
        return c.Notify(tag=tag, groups=None)
    if word != "SET":
        raise _Fail("Expected NONE or SET")
    status = False
    if cur.at(b" STATUS"):
        cur.pos += len(b" STATUS")
        status = True
    groups = []
    while cur.try_sp():
        groups.append(_notify_group(cur))
    if not groups:
        raise _Fail("Expected an event group")
    cur.end()
    return c.Notify(tag=tag, groups=tuple(groups), status=status)


def _cancelupdate(cur: _Cursor, tag: str) -> c.Command:
    # RFC 5267 §4.3: "CANCELUPDATE" 1*(SP quoted)
    tags = []
    while cur.try_sp():
        tags.append(cur.string())
    if not tags:
        raise _Fail("Expected the tags of the searches to cancel")
    cur.end()
    return c.CancelUpdate(tag=tag, tags=tuple(tags))


# -- FETCH (RFC 3501 §6.4.5)

_SIMPLE_FETCH: Final = {
    item.value: item
    for item in (
        c.FetchItem.FLAGS,
        c.FetchItem.UID,
        c.FetchItem.INTERNALDATE,
        c.FetchItem.RFC822,
        c.FetchItem.RFC822_HEADER,
        c.FetchItem.RFC822_SIZE,
        c.FetchItem.RFC822_TEXT,
        c.FetchItem.ENVELOPE,
        c.FetchItem.BODYSTRUCTURE,
        c.FetchItem.MODSEQ,
    )
}
_FAST: Final = (
    c.FetchAttr(c.FetchItem.FLAGS),
    c.FetchAttr(c.FetchItem.INTERNALDATE),
    c.FetchAttr(c.FetchItem.RFC822_SIZE),
)
_MACROS: Final = {
    "FAST": _FAST,
    "ALL": (*_FAST, c.FetchAttr(c.FetchItem.ENVELOPE)),
    "FULL": (*_FAST, c.FetchAttr(c.FetchItem.ENVELOPE), c.FetchAttr(c.FetchItem.BODY)),
}


def _section_parts(token: bytes) -> tuple[int, ...]:
    raw = token.split(b".")
    if len(raw) > 64 or any(len(p) > 10 or int(p) > _MAX_NUMBER for p in raw):
        raise _Fail("Invalid section part")
    return tuple(int(p) for p in raw)


def _section(cur: _Cursor) -> c.Section:
    # section = "[" [section-spec] "]"
    cur.take(b"[", "'['")
    if cur.peek() == 0x5D:
        cur.pos += 1
        return c.Section()
    parts: tuple[int, ...] = ()
    m = _SECTION_PART.match(cur.buf, cur.pos)
    if m:
        parts = _section_parts(m.group())
        cur.pos = m.end()
        if cur.peek() == 0x5D:
            cur.pos += 1
            return c.Section(parts)
        cur.take(b".", "'.' or ']' in the section")
    word = cur.match(_FETCH_NAME, "a section name").group().decode("ascii").upper()
    try:
        text = c.SectionText(word)
    except ValueError:
        raise _Fail("Unknown section name") from None
    if text is c.SectionText.MIME and not parts:
        raise _Fail("MIME needs a part number")
    fields: tuple[str, ...] = ()
    if text in (c.SectionText.HEADER_FIELDS, c.SectionText.HEADER_FIELDS_NOT):
        cur.sp()
        fields = tuple(
            f.upper() for f in cur.paren_list(lambda: cur.astring("a header name"), "header names")
        )
    cur.take(b"]", "']' after the section")
    return c.Section(parts, text, fields)


def _binary_section(cur: _Cursor) -> c.Section:
    # RFC 3516 §4.2: section-binary = "[" [section-part] "]"
    cur.take(b"[", "'['")
    parts: tuple[int, ...] = ()
    if cur.peek() != 0x5D:
        parts = _section_parts(cur.match(_SECTION_PART, "a part number").group())
    cur.take(b"]", "']' after the section")
    return c.Section(parts)


def _partial(cur: _Cursor) -> c.Partial | None:
    # "<" number "." nz-number ">"
    if cur.peek() != 0x3C:
        return None
    cur.pos += 1
    offset = cur.number("a partial offset")
    cur.take(b".", "'.' in the partial range")
    length = cur.number("a partial length", nonzero=True)
    cur.take(b">", "'>' after the partial range")
    return c.Partial(offset, length)


def _fetch_attr(cur: _Cursor) -> c.FetchAttr:
    name = cur.match(_FETCH_NAME, "a fetch item").group().decode("ascii").upper()
    simple = _SIMPLE_FETCH.get(name)
    if simple is not None:
        return c.FetchAttr(simple)
    if name in ("BODY", "BODY.PEEK"):
        if cur.peek() != 0x5B:
            if name == "BODY":
                return c.FetchAttr(c.FetchItem.BODY)
            raise _Fail("Expected '[' after BODY.PEEK")
        section = _section(cur)
        return c.FetchAttr(
            c.FetchItem.BODY_SECTION, section, _partial(cur), peek=name == "BODY.PEEK"
        )
    if name in ("BINARY", "BINARY.PEEK"):
        section = _binary_section(cur)
        return c.FetchAttr(c.FetchItem.BINARY, section, _partial(cur), peek=name == "BINARY.PEEK")
    if name == "BINARY.SIZE":
        return c.FetchAttr(c.FetchItem.BINARY_SIZE, _binary_section(cur))
    raise _Fail("Unknown fetch item")


def _fetch(uid: bool) -> _Handler:
    def parse(cur: _Cursor, tag: str) -> c.Command:
        cur.sp()
        seqset = cur.sequence_set()
        cur.sp()
        attrs: tuple[c.FetchAttr, ...]
        if cur.peek() == 0x28:
            attrs = tuple(cur.paren_list(lambda: _fetch_attr(cur), "fetch items"))
        else:
            m = _FETCH_NAME.match(cur.buf, cur.pos)
            macro = _MACROS.get(m.group().decode("ascii").upper()) if m else None
            if m and macro is not None:
                cur.pos = m.end()
                attrs = macro
            else:
                attrs = (_fetch_attr(cur),)
            cur.delimited("fetch item")
        changed_since: int | None = None
        vanished = False
        if cur.try_sp():
            # RFC 4466 §2.4 fetch-modifiers; RFC 7162 §3.1.4.1 CHANGEDSINCE, §3.2.6 VANISHED
            def modifier() -> None:
                nonlocal changed_since, vanished
                word = cur.keyword("a fetch modifier")
                if word == "CHANGEDSINCE" and changed_since is None:
                    cur.sp()
                    changed_since = cur.number("a mod-sequence", limit=_MAX_MODSEQ)
                elif word == "VANISHED" and uid and not vanished:
                    vanished = True
                else:
                    raise _Fail("Unknown fetch modifier")

            cur.paren_list(modifier, "fetch modifiers")
            if vanished and changed_since is None:
                # RFC 7162 §3.2.6: VANISHED only together with CHANGEDSINCE.
                raise _Fail("VANISHED needs CHANGEDSINCE")
        cur.end()
        return c.Fetch(
            tag=tag,
            uid=uid,
            sequence_set=seqset,
            attributes=attrs,
            changed_since=changed_since,
            vanished=vanished,
        )

    return parse


def _store(uid: bool) -> _Handler:
    def parse(cur: _Cursor, tag: str) -> c.Command:
        cur.sp()
        seqset = cur.sequence_set()
        cur.sp()
        unchanged_since: int | None = None
        if cur.peek() == 0x28:
            # RFC 4466 §2.5 store-modifiers; RFC 7162 §3.1.3 UNCHANGEDSINCE
            def modifier() -> None:
                nonlocal unchanged_since
                if cur.keyword("a store modifier") != "UNCHANGEDSINCE":
                    raise _Fail("Unknown store modifier")
                cur.sp()
                unchanged_since = cur.number("a mod-sequence", limit=_MAX_MODSEQ)

            cur.paren_list(modifier, "store modifiers")
            cur.sp()
        m = cur.match(_STORE_ITEM, "FLAGS, +FLAGS or -FLAGS")
        cur.delimited("store item")
        word = m.group().decode("ascii").upper()
        silent = word.endswith(".SILENT")
        mode = c.StoreMode(word.removesuffix(".SILENT"))
        cur.sp()
        if cur.peek() == 0x28:
            flags = cur.flag_list()
        else:
            collected = [cur.flag(allow_recent=False)]
            while cur.try_sp():
                collected.append(cur.flag(allow_recent=False))
            flags = tuple(collected)
        cur.end()
        return c.Store(
            tag=tag,
            uid=uid,
            sequence_set=seqset,
            mode=mode,
            silent=silent,
            flags=flags,
            unchanged_since=unchanged_since,
        )

    return parse


def _copy_like(cls: type[c.Copy] | type[c.Move], uid: bool) -> _Handler:
    def parse(cur: _Cursor, tag: str) -> c.Command:
        cur.sp()
        seqset = cur.sequence_set()
        cur.sp()
        mailbox = cur.mailbox()
        cur.end()
        return cls(tag=tag, uid=uid, sequence_set=seqset, mailbox=mailbox)

    return parse


def _setacl(cur: _Cursor, tag: str) -> c.Command:
    # RFC 4314 §3.1: "SETACL" SP mailbox SP identifier SP mod-rights
    cur.sp()
    mailbox = cur.mailbox()
    cur.sp()
    identifier = cur.astring("an identifier")
    cur.sp()
    rights = cur.astring("rights")
    mode = c.AclMode.REPLACE
    if rights[:1] in ("+", "-"):
        mode = c.AclMode(rights[0])
        rights = rights[1:]
    if not _RIGHTS.fullmatch(rights):
        raise _Fail("Invalid rights")
    cur.end()
    return c.SetAcl(tag=tag, mailbox=mailbox, identifier=identifier, mode=mode, rights=rights)


_COMMANDS: Final[dict[str, _Handler]] = {
    "CAPABILITY": _no_args(c.Capability),
    "NOOP": _no_args(c.Noop),
    "LOGOUT": _no_args(c.Logout),
    "STARTTLS": _no_args(c.StartTls),
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    "ID": _id,
    "ENABLE": _enable,
    "NAMESPACE": _no_args(c.Namespace),
    "SELECT": _select_like(c.Select),
    "EXAMINE": _select_like(c.Examine),
    "CREATE": _create,
    "DELETE": _mailbox_only(c.Delete),
    "RENAME": _rename,
    "SUBSCRIBE": _mailbox_only(c.Subscribe),
    "UNSUBSCRIBE": _mailbox_only(c.Unsubscribe),
    "LIST": _list,
    "LSUB": _lsub,
    "STATUS": _status,
    "APPEND": _append,
    "CHECK": _no_args(c.Check),
    "CLOSE": _no_args(c.Close),
    "UNSELECT": _no_args(c.Unselect),
    "EXPUNGE": _expunge,
    "SEARCH": _search(uid=False),
    "FETCH": _fetch(uid=False),
    "STORE": _store(uid=False),
    "COPY": _copy_like(c.Copy, uid=False),
    "MOVE": _copy_like(c.Move, uid=False),
    "IDLE": _no_args(c.Idle),
    "GETACL": _mailbox_only(c.GetAcl),
    "SETACL": _setacl,
    "DELETEACL": _mailbox_identifier(c.DeleteAcl),
    "LISTRIGHTS": _mailbox_identifier(c.ListRights),
    "MYRIGHTS": _mailbox_only(c.MyRights),
    "SORT": _sort(uid=False),
    "THREAD": _thread(uid=False),
    "CANCELUPDATE": _cancelupdate,
    "NOTIFY": _notify,
}

# RFC 3501 §6.4.8 (and RFC 4315 §2.1 EXPUNGE, RFC 6851 §3.2 MOVE)
_UID_COMMANDS: Final[dict[str, _Handler]] = {
    "COPY": _copy_like(c.Copy, uid=True),
    "MOVE": _copy_like(c.Move, uid=True),
    "FETCH": _fetch(uid=True),
    "SEARCH": _search(uid=True),
    "STORE": _store(uid=True),
    "EXPUNGE": _uid_expunge,
    "SORT": _sort(uid=True),
    "THREAD": _thread(uid=True),
}


def parse_command(data: bytes) -> c.Command | ParseFailure:
    """Parse one complete command as sent on the wire, literals inlined
    (``a LOGIN {3}\\r\\nbob pw\\r\\n``). A missing final CRLF is added, so it may be
    omitted unless the command ends with a literal whose own data ends with CRLF.
    """
    if not data.endswith(_CRLF):
        data += _CRLF
    cur = _Cursor(data)
    m = _TAG.match(data)
    if m is None:
        return ParseFailure(None, FailureKind.SYNTAX, "Expected a tag")
    tag = m.group().decode("ascii")
    cur.pos = m.end()
    try:
        if cur.peek() != 0x20:
            raise _Fail(
                "Expected a space after the tag" if not cur.at_end() else "Expected a command"
            )
        cur.pos += 1
        word = cur.keyword("a command")
        if word == "UID":
            cur.sp()
            word = cur.keyword("a command after UID")
            handler = _UID_COMMANDS.get(word)
        else:
            handler = _COMMANDS.get(word)
        if handler is None:
            return ParseFailure(tag, FailureKind.UNKNOWN_COMMAND, "Unknown command")
        cur.delimited("command name")
        return handler(cur, tag)
    except _Fail as e:
        return ParseFailure(tag, e.kind, e.message)


# ------------------------------------------------------------------------- helpers


@dataclass(frozen=True, slots=True)
class SaslCancelled:
    """The client answered an AUTHENTICATE challenge with ``*`` (RFC 3501 §6.2.2)."""


def parse_sasl_response(line: bytes) -> bytes | SaslCancelled | None:
    """Decode one AUTHENTICATE client response line (from `CommandReader.read_line`).

    Returns the decoded bytes, `SaslCancelled` for ``*``, or None when the line is not
    valid base64 (answer ``BAD``).
    """
    if line == b"*":
        return SaslCancelled()
    if line == b"=":  # an empty response, as in RFC 4959 §3
        return b""
    if _BASE64.fullmatch(line) is None:
        return None
    try:
        return base64.b64decode(line, validate=True)
    except binascii.Error:  # pragma: no cover - the pattern already checked
        return None


def is_idle_done(line: bytes) -> bool:
    """Whether a line read during IDLE is the ``DONE`` that ends it (RFC 2177 §3)."""
    return line.upper() == b"DONE"


def decode_mailbox_name(name: str) -> str | None:
    """Decode a modified UTF-7 mailbox name (RFC 3501 §5.1.3); None if malformed."""
    out: list[str] = []
    i = 0
    while i < len(name):
        ch = name[i]
        if ord(ch) > 0x7E or ord(ch) < 0x20:
            return None
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            return None
        chunk = name[i + 1 : end]
        i = end + 1
        if not chunk:
            out.append("&")
            continue
        if not re.fullmatch(r"[A-Za-z0-9+,]+", chunk):
            return None
        raw = chunk.replace(",", "/")
        raw += "=" * (-len(raw) % 4)
        try:
            decoded = base64.b64decode(raw).decode("utf-16-be")
        except (binascii.Error, UnicodeDecodeError):
            return None
        # Printable ASCII must not be base64-encoded (RFC 3501 §5.1.3).
        if any(0x20 <= ord(x) <= 0x7E for x in decoded):
            return None
        out.append(decoded)
    return "".join(out)
