"""SEARCH evaluation over stored metadata (RFC 3501 §6.4.4), pure.

The session hands each message as a `Candidate`: what the folder snapshot knows
(number, UID, flags, size, dates, MODSEQ) plus, only when the criteria need them, the
decrypted metadata (`needs_meta`: envelope headers, Date) and the raw message
(`needs_raw`: BODY, TEXT, other header fields). So ``SEARCH UNSEEN`` on 10,000
messages touches no blob at all.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from relay.imap import commands as c
from relay.message.analysis import MessageMeta
from relay.message.imapview import address_search_text, search_header, search_text

# Headers whose decoded value the metadata already holds (relay.message SearchHeaders).
_META_HEADERS = {"FROM": "from_", "TO": "to", "CC": "cc", "BCC": "bcc", "SUBJECT": "subject"}
_ADDRESS_HEADERS = frozenset({"FROM", "TO", "CC", "BCC"})


@dataclass(frozen=True, slots=True)
class Candidate:
    """One message as SEARCH sees it; `meta` / `raw` present only if needed."""

    seq: int
    uid: int
    flags: frozenset[str]  # as the session sees them (\Recent too); case-insensitive
    modseq: int
    internal_date: dt.datetime | None = None  # aware; set when `Needs.row`
    size: int = 0  # set when `Needs.row`
    meta: MessageMeta | None = None
    raw: bytes | None = None


@dataclass(frozen=True, slots=True)
class Needs:
    meta: bool = False
    raw: bool = False
    row: bool = False  # size or internal date

    def __or__(self, other: Needs) -> Needs:
        return Needs(self.meta or other.meta, self.raw or other.raw, self.row or other.row)


def needs(key: c.SearchKey) -> Needs:
    """What the criteria read beyond the snapshot."""
    if isinstance(key, c.SearchText):
        return Needs(meta=True, raw=True, row=True)
    if isinstance(key, c.SearchHeader):
        if key.field in _META_HEADERS:
            return Needs(meta=True, row=True)
        return Needs(meta=True, raw=True, row=True)
    if isinstance(key, c.SearchDate):
        return Needs(meta=key.field is c.DateField.SENT, row=True)
    if isinstance(key, c.SearchSize):
        return Needs(row=True)
    if isinstance(key, c.SearchNot):
        return needs(key.key)
    if isinstance(key, c.SearchOr):
        return needs(key.left) | needs(key.right)
    if isinstance(key, c.SearchAnd):
        out = Needs()
        for k in key.keys:
            out = out | needs(k)
        return out
    return Needs()


def uses_modseq(key: c.SearchKey) -> bool:
    """Whether the criteria hold a MODSEQ key (RFC 7162 §3.1.5: the answer then
    carries the highest MODSEQ of the messages found)."""
    if isinstance(key, c.SearchModSeq):
        return True
    if isinstance(key, c.SearchNot):
        return uses_modseq(key.key)
    if isinstance(key, c.SearchOr):
        return uses_modseq(key.left) or uses_modseq(key.right)
    if isinstance(key, c.SearchAnd):
        return any(uses_modseq(k) for k in key.keys)
    return False


_LOWERED: dict[frozenset[str], frozenset[str]] = {}  # a folder has few distinct flag sets


def _lowered(flags: frozenset[str]) -> frozenset[str]:
    found = _LOWERED.get(flags)
    if found is None:
        if len(_LOWERED) > 10_000:
            _LOWERED.clear()
        found = _LOWERED[flags] = frozenset(f.lower() for f in flags)
    return found


def flag_predicate(key: c.SearchKey) -> Callable[[frozenset[str]], bool] | None:
    """For criteria made of flag tests only (``UNSEEN``, ``DELETED NOT FLAGGED``, ...),
    a test of a message's flags equivalent to `matches`; None for any other criteria.
    ``SEARCH UNSEEN`` on 100,000 messages then builds nothing per message."""
    if isinstance(key, c.SearchAll):
        return lambda flags: True
    if isinstance(key, c.SearchFlag):
        wanted, present = key.flag.lower(), key.present
        return lambda flags: (wanted in _lowered(flags)) == present
    if isinstance(key, c.SearchNot):
        inner = flag_predicate(key.key)
        return None if inner is None else (lambda flags: not inner(flags))
    if isinstance(key, c.SearchOr):
        left, right = flag_predicate(key.left), flag_predicate(key.right)
        if left is None or right is None:
            return None
        return lambda flags: left(flags) or right(flags)
    if isinstance(key, c.SearchAnd):
        parts = [flag_predicate(k) for k in key.keys]
        if any(p is None for p in parts):
            return None
        tests = [p for p in parts if p is not None]
        return lambda flags: all(t(flags) for t in tests)
    return None


def _compare(day: dt.date | None, op: c.DateOp, when: dt.date) -> bool:
    if day is None:
        return False
    if op is c.DateOp.BEFORE:
        return day < when
    if op is c.DateOp.ON:
        return day == when
    return day >= when  # SINCE: on or after (RFC 3501 §6.4.4)


def matches(key: c.SearchKey, m: Candidate, *, messages: int, largest_uid: int) -> bool:
    """Whether message `m` satisfies `key`. `messages` and `largest_uid` give ``*``."""
    if isinstance(key, c.SearchAll):
        return True
    if isinstance(key, c.SearchAnd):
        return all(matches(k, m, messages=messages, largest_uid=largest_uid) for k in key.keys)
    if isinstance(key, c.SearchOr):
        return matches(key.left, m, messages=messages, largest_uid=largest_uid) or matches(
            key.right, m, messages=messages, largest_uid=largest_uid
        )
    if isinstance(key, c.SearchNot):
        return not matches(key.key, m, messages=messages, largest_uid=largest_uid)
    if isinstance(key, c.SearchFlag):
        # `flags` is the session's view: \Recent is there when the message is recent
        # for this session (RECENT, NEW, OLD; RFC 3501 §6.4.4).
        return (key.flag.lower() in _lowered(m.flags)) == key.present
    if isinstance(key, c.SearchSequence):
        if key.sequence_set.saved:
            return False  # SEARCHRES ($) is not advertised
        if key.uid:
            return key.sequence_set.contains(m.uid, largest_uid)
        return key.sequence_set.contains(m.seq, messages)
    if isinstance(key, c.SearchSize):
        return m.size > key.size if key.larger else m.size < key.size
    if isinstance(key, c.SearchDate):
        if key.field is c.DateField.INTERNAL:
            # "disregarding time and timezone": the date in the server's zone.
            day = m.internal_date.astimezone().date() if m.internal_date else None
            return _compare(day, key.op, key.date)
        return _compare(m.meta.search.sent if m.meta else None, key.op, key.date)
    if isinstance(key, c.SearchModSeq):
        return m.modseq >= key.modseq
    if isinstance(key, c.SearchHeader):
        return _header(key, m)
    if isinstance(key, c.SearchText):
        if m.raw is None or m.meta is None:
            return False
        return search_text(m.raw, m.meta, key.value, "BODY" if key.body_only else "TEXT")
    return False


def _header(key: c.SearchHeader, m: Candidate) -> bool:
    attr = _META_HEADERS.get(key.field)
    if attr is not None and m.meta is not None:
        value: str = getattr(m.meta.search, attr)
        if not key.value:
            return bool(value)
        if key.field in _ADDRESS_HEADERS:
            # Whole address, local part, domain or display name (`address_search_text`).
            raw = getattr(m.meta.envelope, attr) or ""
            value = address_search_text(raw)
        return key.value.casefold() in value.casefold()
    if m.raw is None or m.meta is None:
        return False
    return search_header(m.raw, m.meta, key.field, key.value)
