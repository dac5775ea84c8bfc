"""IMAP response serialisation (RFC 3501 §7, §9), pure.

Handlers build responses with these helpers; only the connection writes the bytes.
Everything here returns ``bytes`` ready for the wire (lines end with CRLF) or ``str``
fragments that are pure ASCII. Invalid *server-side* arguments (a naive datetime, a
tag with a space) raise ValueError: they are programming errors, not client input.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from relay.imap.commands import FetchAttr, FetchItem

_CRLF: Final = b"\r\n"
_ATOM_SAFE: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\]+')  # ASTRING-CHAR
_TAG: Final = re.compile(r'[^\x00-\x20\x7f-\U0010ffff(){%*"\\+]+')
_QUOTABLE_ASCII: Final = re.compile(rb"[\x20-\x7e]*")
_QUOTABLE_UTF8: Final = re.compile(rb"[^\x00\r\n]*")
_MONTHS: Final = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)


class Status(enum.StrEnum):
    """Status responses (RFC 3501 §7.1)."""

    OK = "OK"
    NO = "NO"
    BAD = "BAD"
    PREAUTH = "PREAUTH"
    BYE = "BYE"


class ResponseCode(enum.StrEnum):
    """Response codes in ``[...]`` (RFC 3501 §7.1 and the RFC on each line)."""

    # RFC 3501 §7.1
    ALERT = "ALERT"
    BADCHARSET = "BADCHARSET"
    CAPABILITY = "CAPABILITY"
    PARSE = "PARSE"
    PERMANENTFLAGS = "PERMANENTFLAGS"
    READ_ONLY = "READ-ONLY"
    READ_WRITE = "READ-WRITE"
    TRYCREATE = "TRYCREATE"
    UIDNEXT = "UIDNEXT"
    UIDVALIDITY = "UIDVALIDITY"
    UNSEEN = "UNSEEN"
    # RFC 5530
    UNAVAILABLE = "UNAVAILABLE"
    AUTHENTICATIONFAILED = "AUTHENTICATIONFAILED"
    AUTHORIZATIONFAILED = "AUTHORIZATIONFAILED"
    EXPIRED = "EXPIRED"
    PRIVACYREQUIRED = "PRIVACYREQUIRED"
    CONTACTADMIN = "CONTACTADMIN"
    NOPERM = "NOPERM"
    INUSE = "INUSE"
    EXPUNGEISSUED = "EXPUNGEISSUED"
    CORRUPTION = "CORRUPTION"
    SERVERBUG = "SERVERBUG"
    CLIENTBUG = "CLIENTBUG"
    CANNOT = "CANNOT"
    LIMIT = "LIMIT"
    OVERQUOTA = "OVERQUOTA"
    ALREADYEXISTS = "ALREADYEXISTS"
    NONEXISTENT = "NONEXISTENT"
    # RFC 4315 UIDPLUS
    APPENDUID = "APPENDUID"
    COPYUID = "COPYUID"
    UIDNOTSTICKY = "UIDNOTSTICKY"
    # RFC 7162 CONDSTORE
    HIGHESTMODSEQ = "HIGHESTMODSEQ"
    NOMODSEQ = "NOMODSEQ"
    MODIFIED = "MODIFIED"
    CLOSED = "CLOSED"
    # RFC 4469 §5 / RFC 7889 APPENDLIMIT
    TOOBIG = "TOOBIG"
    # RFC 5182 SEARCHRES
    NOTSAVED = "NOTSAVED"
    # RFC 5267 §4.2 CONTEXT
    NOUPDATE = "NOUPDATE"
    # RFC 4469 §5 CATENATE
    BADURL = "BADURL"
    # RFC 5465 §3.1 NOTIFY
    BADEVENT = "BADEVENT"
    # RFC 3516 BINARY
    UNKNOWN_CTE = "UNKNOWN-CTE"
    # RFC 6154 CREATE-SPECIAL-USE
    USEATTR = "USEATTR"
    # RFC 9051 §7.1
    HASCHILDREN = "HASCHILDREN"


@dataclass(frozen=True, slots=True)
class Code:
    """A response code with its argument, e.g. ``UIDNEXT 4392``."""

    code: ResponseCode
    argument: str = ""

    def __str__(self) -> str:
        return f"{self.code} {self.argument}" if self.argument else str(self.code)


# ------------------------------------------------------------------------------ strings


def quoted(value: str | bytes, *, utf8: bool = False) -> bytes:
    """``value`` as a quoted string, escaping ``"`` and ``\\`` (RFC 3501 §4.3).

    Raises ValueError for CR, LF, NUL, and (unless ``utf8``, i.e. UTF8=ACCEPT enabled,
    RFC 6855 §3) 8-bit or control characters: use `string` to choose automatically.
    """
    data = value.encode("utf-8") if isinstance(value, str) else value
    pattern = _QUOTABLE_UTF8 if utf8 else _QUOTABLE_ASCII
    if pattern.fullmatch(data) is None:
        raise ValueError("value cannot be sent as a quoted string")
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def literal(value: str | bytes) -> bytes:
    """``value`` as a literal ``{n}\\r\\n...`` (RFC 3501 §4.3)."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    return b"{%d}\r\n" % len(data) + data


def string(value: str | bytes, *, utf8: bool = False) -> bytes:
    """A quoted string when possible, else a literal (CR, LF, NUL, controls, 8-bit)."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    pattern = _QUOTABLE_UTF8 if utf8 else _QUOTABLE_ASCII
    if pattern.fullmatch(data) is not None and len(data) <= 1024:
        return quoted(data, utf8=utf8)
    return literal(data)


def astring(value: str | bytes, *, utf8: bool = False) -> bytes:
    """An atom when every character allows it (RFC 3501 §9 ASTRING-CHAR), else `string`."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    if _ATOM_SAFE.fullmatch(data) is not None and data.upper() != b"NIL":
        return data
    return string(data, utf8=utf8)


def nstring(value: str | bytes | None, *, utf8: bool = False) -> bytes:
    """``NIL`` for None, else `string` (RFC 3501 §9 nstring)."""
    return b"NIL" if value is None else string(value, utf8=utf8)


def paren(items: Iterable[bytes | str]) -> bytes:
    """A parenthesised, space-separated list."""
    return b"(" + b" ".join(i.encode("ascii") if isinstance(i, str) else i for i in items) + b")"


def flag_list(flags: Iterable[str]) -> bytes:
    """``(\\Seen $Forwarded)``; flags are atoms, so they are written as they are."""
    return paren(flags)


# ---------------------------------------------------------------------------- responses


def _text(text: str) -> bytes:
    # resp-text must be one line of at least one character (RFC 3501 §9 text).
    cleaned = text.replace("\r", " ").replace("\n", " ").replace("\x00", " ")
    return (cleaned or "completed").encode("utf-8")


def _resp_text(text: str, code: ResponseCode | Code | None) -> bytes:
    if code is None:
        return _text(text)
    return b"[" + _text(str(code)) + b"] " + _text(text)


def tagged(tag: str, status: Status, text: str, code: ResponseCode | Code | None = None) -> bytes:
    """``tag OK [code] text\\r\\n`` (RFC 3501 §7.1)."""
    if _TAG.fullmatch(tag) is None:
        raise ValueError("invalid tag")
    if status in (Status.PREAUTH, Status.BYE):
        raise ValueError("PREAUTH and BYE are untagged only")
    return tag.encode("ascii") + b" " + status.encode() + b" " + _resp_text(text, code) + _CRLF


def untagged_status(status: Status, text: str, code: ResponseCode | Code | None = None) -> bytes:
    """``* OK [code] text\\r\\n``, ``* BYE ...`` (RFC 3501 §7.1)."""
    return b"* " + status.encode() + b" " + _resp_text(text, code) + _CRLF


def untagged(data: bytes | str) -> bytes:
    """``* data\\r\\n`` for server data (``* 3 EXISTS``, ``* CAPABILITY ...``)."""
    return b"* " + (data.encode("utf-8") if isinstance(data, str) else data) + _CRLF


def continuation(text: str = "Ready") -> bytes:
    """``+ text\\r\\n``: go on with a literal, or a (base64) SASL challenge / IDLE."""
    return b"+ " + text.replace("\r", " ").replace("\n", " ").encode("utf-8") + _CRLF


def sasl_challenge(challenge: bytes) -> bytes:
    """``+ base64\\r\\n`` for an AUTHENTICATE challenge (RFC 3501 §6.2.2)."""
    return b"+ " + base64.b64encode(challenge) + _CRLF


# ------------------------------------------------------------------------ values


def spaced(numbers: list[int]) -> str:
    """``"4 7 12"``: the numbers of a ``* SEARCH`` or ``* SORT`` answer.

    The list's repr is built in C, about 2.5 times faster than ``" ".join(map(str,
    ...))`` for the 50,000 UIDs of an UNSEEN search in a 100,000-message box. A bool
    or an int subclass would print otherwise, so plain ints only.
    """
    return repr(numbers)[1:-1].replace(",", "")


def sequence_set(numbers: Iterable[int]) -> str:
    """Compact ascending runs, keeping the given order: ``[1,2,3,4,5,7]`` → ``1:5,7``.

    The order is kept because COPYUID pairs source and destination UIDs by position
    (RFC 4315 §3); pass sorted numbers for the shortest output. Empty input is an
    error (no empty sequence set in the grammar).
    """
    out: list[str] = []
    start: int | None = None
    prev = 0
    for n in numbers:
        if n < 1:
            raise ValueError("sequence numbers start at 1")
        if start is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = n
    if start is None:
        raise ValueError("empty sequence set")
    out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out)


def date_time(value: dt.datetime) -> str:
    """``"17-Jul-1996 02:44:25 -0700"`` with its quotes (RFC 3501 §9 date-time)."""
    offset = value.utcoffset()
    if offset is None:
        raise ValueError("naive datetime")
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hh, mm = divmod(abs(minutes), 60)
    return (
        f'"{value.day:2d}-{_MONTHS[value.month - 1]}-{value.year:04d} '
        f'{value.hour:02d}:{value.minute:02d}:{value.second:02d} {sign}{hh:02d}{mm:02d}"'
    )


def fetch_item_name(attr: FetchAttr) -> str:
    """The name a FETCH response gives an item: ``BODY[1.HEADER]<0>`` for
    ``BODY.PEEK[1.HEADER]<0.100>`` (RFC 3501 §7.4.2: origin only, no ``.PEEK``).
    """
    origin = f"<{attr.partial.offset}>" if attr.partial is not None else ""
    section = str(attr.section) if attr.section is not None else ""
    if attr.item is FetchItem.BODY_SECTION:
        return f"BODY[{section}]{origin}"
    if attr.item is FetchItem.BINARY:
        return f"BINARY[{section}]{origin}"
    if attr.item is FetchItem.BINARY_SIZE:
        return f"BINARY.SIZE[{section}]"
    return str(attr.item)


def encode_mailbox_name(name: str) -> str:
    """Encode a mailbox name in modified UTF-7 (RFC 3501 §5.1.3)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append(
                "&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-"
            )
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


# ----------------------------------------------------------------- common response codes


def uidnext(uid: int) -> Code:
    """``[UIDNEXT n]`` (RFC 3501 §7.1)."""
    return Code(ResponseCode.UIDNEXT, str(uid))


def uidvalidity(value: int) -> Code:
    """``[UIDVALIDITY n]`` (RFC 3501 §7.1)."""
    return Code(ResponseCode.UIDVALIDITY, str(value))


def unseen(number: int) -> Code:
    """``[UNSEEN n]``: the message number of the first unseen message."""
    return Code(ResponseCode.UNSEEN, str(number))


def highestmodseq(value: int) -> Code:
    """``[HIGHESTMODSEQ n]`` (RFC 7162 §3.1.2.1)."""
    return Code(ResponseCode.HIGHESTMODSEQ, str(value))


def permanentflags(flags: Iterable[str], *, keywords: bool = True) -> Code:
    """``[PERMANENTFLAGS (\\Seen ... \\*)]``; ``\\*`` when new keywords can be made."""
    items = [*flags, "\\*"] if keywords else list(flags)
    return Code(ResponseCode.PERMANENTFLAGS, flag_list(items).decode("utf-8"))


def capability_code(capabilities: Iterable[str]) -> Code:
    """``[CAPABILITY IMAP4rev1 ...]``."""
    return Code(ResponseCode.CAPABILITY, " ".join(capabilities))


def appenduid(uidvalidity: int, uids: Iterable[int]) -> Code:
    """``[APPENDUID validity uid-set]`` (RFC 4315 §3)."""
    return Code(ResponseCode.APPENDUID, f"{uidvalidity} {sequence_set(uids)}")


def copyuid(uidvalidity: int, source: Iterable[int], destination: Iterable[int]) -> Code:
    """``[COPYUID validity source-set dest-set]``, pairs kept in order (RFC 4315 §3)."""
    src, dst = list(source), list(destination)
    if len(src) != len(dst):
        raise ValueError("COPYUID needs as many source as destination UIDs")
    return Code(ResponseCode.COPYUID, f"{uidvalidity} {sequence_set(src)} {sequence_set(dst)}")


def modified(numbers: Iterable[int]) -> Code:
    """``[MODIFIED set]``: messages STORE did not change (RFC 7162 §3.1.3)."""
    return Code(ResponseCode.MODIFIED, sequence_set(numbers))
