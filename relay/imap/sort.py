"""SORT keys and ordering (RFC 5256 §2, §3; RFC 5957 DISPLAYFROM/DISPLAYTO), pure.

Every key a SORT or THREAD command compares is derived once per message from what the
store computed at acceptance (`MessageMeta`: the raw envelope headers) plus the
message row (internal date, size): `keys_of` builds a `MessageKeys`, which the IMAP
service keeps in memory per blob (blobs never change), so sorting 10,000 messages
reads no message body and parses no header twice.

Strings compare with a Unicode case map (RFC 5051 i;unicode-casemap, as Dovecot and
RFC 5957 §3 do; for ASCII it is RFC 5256's i;ascii-casemap). Messages that compare
equal on every criterion stay in ascending message-number order (RFC 5256 §3), also
under REVERSE.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import unicodedata
from collections.abc import Callable, Sequence
from email.utils import parsedate_tz
from typing import Any, TypeVar

from relay.bounded import Bounded
from relay.imap import commands as c
from relay.message.analysis import Envelope, MessageMeta, decode_words
from relay.message.imapview import parse_addresses

_WSP = re.compile(r"[ \t\r\n]+")
# RFC 5256 §5: subj-blob = "[" *BLOBCHAR "]" *WSP ; BLOBCHAR is any char but "[" "]".
_BLOB = re.compile(r"\[[^\[\]]*\] *")
# subj-leader = (*subj-blob subj-refwd) / WSP ;
# subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
_LEADER = re.compile(r"(?:\[[^\[\]]*\] *)*(?:re|fwd?) *(?:\[[^\[\]]*\] *)?:", re.IGNORECASE)
_TRAILER = "(fwd)"  # subj-trailer = "(fwd)" / WSP
_FWD_HDR = "[fwd:"  # subj-fwd-hdr; subj-fwd-trl = "]"
_MSG_ID = re.compile(r"<([^<>]*)>")


def casemap(value: str) -> str:
    """The comparison form of a string: RFC 5051 i;unicode-casemap (title case, then
    compatibility decomposition), as Dovecot compares; ``[`` and ``_`` thus sort
    after letters, as in RFC 5256's i;ascii-casemap of upper-cased text."""
    if value.isascii():
        return value.upper()
    return unicodedata.normalize("NFKD", value.upper())


def base_subject(subject: str | None) -> tuple[str, bool]:
    """RFC 5256 §2.1: the base subject of a raw Subject value, and whether the message
    is a reply or forward (a subj-refwd, "(fwd)" trailer or "[fwd: ...]" was removed).

    Step (1): RFC 2047 words decoded, runs of whitespace made one space.
    """
    s = _WSP.sub(" ", decode_words(subject or ""))
    reply = False
    while True:
        # (2) remove trailing "(fwd)" and whitespace, repeatedly
        while True:
            stripped = s.rstrip(" ")
            if stripped.lower().endswith(_TRAILER):
                stripped = stripped[: -len(_TRAILER)]
                reply = True
            if stripped == s:
                break
            s = stripped
        # (3)-(5) leading subj-leader and subj-blob, until none is left
        while True:
            s = s.lstrip(" ")
            m = _LEADER.match(s)
            if m is not None:
                s = s[m.end() :]
                reply = True
                continue
            m = _BLOB.match(s)
            if m is not None and s[m.end() :].strip(" "):
                s = s[m.end() :]
                continue
            break
        # (6) "[fwd:" ... "]" around the whole subject: unwrap and start again at (2)
        if s[: len(_FWD_HDR)].lower() == _FWD_HDR and s.endswith("]"):
            s = s[len(_FWD_HDR) : -1]
            reply = True
            continue
        return s, reply


def sent_date(date_header: str | None, internal_date: dt.datetime) -> float:
    """RFC 5256 §2.2: the Date header as a UTC timestamp; the internal date when the
    header is missing or cannot be parsed."""
    if date_header:
        try:
            parts = parsedate_tz(date_header)
            if parts is not None:
                offset = parts[9] or 0
                when = dt.datetime(*parts[:6], tzinfo=dt.UTC) - dt.timedelta(seconds=offset)
                return when.timestamp()
        except (ValueError, TypeError, OverflowError, IndexError):
            pass
    return internal_date.timestamp()


def _first_address(value: str | None) -> tuple[str, str]:
    """(display name decoded, addr-spec) of the first address of a header; empty
    strings when there is none. A group's start counts, with the group name as its
    mailbox (as Dovecot sorts ``Cc: team: a@b;`` under "team")."""
    if not value:
        return "", ""
    for name, _adl, mailbox, host in parse_addresses(value):
        if mailbox is None:
            continue  # the end of a group (RFC 3501 §7.4.2)
        spec = f"{mailbox}@{host}" if host else mailbox
        return decode_words(name or "").strip(), spec
    return "", ""


def _mailbox(value: str | None) -> str:
    """RFC 5256 §3 FROM/TO/CC: the addr-mailbox (local part) of the first address."""
    _name, spec = _first_address(value)
    return spec.rsplit("@", 1)[0] if "@" in spec else spec


def _display(value: str | None) -> str:
    """RFC 5957 §3: the first address's display name, or its addr-spec when it has none."""
    name, spec = _first_address(value)
    return name or spec


def message_ids(value: str | None) -> tuple[str, ...]:
    """The Message IDs in a References or In-Reply-To value, without brackets or spaces."""
    if not value:
        return ()
    return tuple(ident for m in _MSG_ID.finditer(value) if (ident := "".join(m.group(1).split())))


class MessageKeys:
    """What SORT and THREAD compare for one message, in comparison form, each key
    computed the first time it is asked for (address parsing is costly, and a SORT
    by DATE needs none of it), then kept."""

    def __init__(
        self,
        envelope: Envelope,
        message_id: str | None,
        references: str | None,
        internal_date: dt.datetime,
        size: int,
    ) -> None:
        self._env = envelope
        self._references = references
        self.message_id = message_id
        self.arrival = internal_date.timestamp()
        self.size = size

    @functools.cached_property
    def date(self) -> float:
        return sent_date(self._env.date, dt.datetime.fromtimestamp(self.arrival, dt.UTC))

    @functools.cached_property
    def _subject(self) -> tuple[str, bool]:
        base, reply = base_subject(self._env.subject)
        return casemap(base), reply

    @property
    def subject(self) -> str:
        """The base subject (RFC 5256 §2.1), case-mapped."""
        return self._subject[0]

    @property
    def reply(self) -> bool:
        """Whether the subject marked a reply or forward (RFC 5256 §2.1)."""
        return self._subject[1]

    @functools.cached_property
    def from_(self) -> str:
        return casemap(_mailbox(self._env.from_))

    @functools.cached_property
    def to(self) -> str:
        return casemap(_mailbox(self._env.to))

    @functools.cached_property
    def cc(self) -> str:
        return casemap(_mailbox(self._env.cc))

    @functools.cached_property
    def display_from(self) -> str:
        return casemap(_display(self._env.from_))

    @functools.cached_property
    def display_to(self) -> str:
        return casemap(_display(self._env.to))

    @functools.cached_property
    def references(self) -> tuple[str, ...]:
        """References, or In-Reply-To's first Message ID (RFC 5256 §3 REFERENCES)."""
        return message_ids(self._references) or message_ids(self._env.in_reply_to)[:1]


def keys_of(meta: MessageMeta, internal_date: dt.datetime, size: int) -> MessageKeys:
    """The sort and thread keys of a message from its stored metadata."""
    return MessageKeys(meta.envelope, meta.message_id, meta.references, internal_date, size)


_KEY_OF: dict[c.SortKey, Callable[[MessageKeys], Any]] = {
    c.SortKey.ARRIVAL: lambda k: k.arrival,
    c.SortKey.CC: lambda k: k.cc,
    c.SortKey.DATE: lambda k: k.date,
    c.SortKey.FROM: lambda k: k.from_,
    c.SortKey.SIZE: lambda k: k.size,
    c.SortKey.SUBJECT: lambda k: k.subject,
    c.SortKey.TO: lambda k: k.to,
    c.SortKey.DISPLAYFROM: lambda k: k.display_from,
    c.SortKey.DISPLAYTO: lambda k: k.display_to,
}

_T = TypeVar("_T")


def sort_messages(
    items: Sequence[tuple[_T, MessageKeys]], criteria: Sequence[c.SortCriterion]
) -> list[_T]:
    """The items (given in ascending message-number order) in SORT order.

    Stable sorts from the last criterion to the first; Python's ``reverse=True`` keeps
    equal items in their original order, which is RFC 5256's tie-break by number.
    """
    order = list(items)
    for crit in reversed(criteria):
        key = _KEY_OF[crit.key]
        order.sort(key=lambda item: key(item[1]), reverse=crit.reverse)
    return [item for item, _ in order]


class KeyCache(Bounded[str, MessageKeys]):
    """The `MessageKeys` of recently sorted messages, by blob id: a stored message
    never changes, so an entry stays right for as long as it is kept (relay.bounded)."""
