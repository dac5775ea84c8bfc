"""IMAP commands and their arguments as frozen values.

`relay.imap.parser` turns client bytes into these; the session dispatches on their type
(`HANDLERS: dict[type[Command], Handler]`). Grammar: RFC 3501 §9 plus the extensions
cited on each class. Strings are already decoded (UTF-8, or the SEARCH charset);
mailbox names are left in modified UTF-7 as sent (RFC 3501 §5.1.3), except that any
case of ``INBOX`` is normalised to ``"INBOX"`` (RFC 3501 §5.1).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class SeqRange:
    """One element of a sequence set: ``start:stop``, or a single number when equal.

    ``None`` stands for ``*``, the largest number in use (RFC 3501 §9 ``seq-number``).
    The order of the bounds is as sent: ``5:3`` and ``3:5`` mean the same set.
    """

    start: int | None
    stop: int | None

    def bounds(self, largest: int) -> tuple[int, int]:
        """The range as ``(low, high)`` with ``*`` replaced by ``largest``."""
        a = largest if self.start is None else self.start
        b = largest if self.stop is None else self.stop
        return (a, b) if a <= b else (b, a)

    def __str__(self) -> str:
        a = "*" if self.start is None else str(self.start)
        if self.start == self.stop:
            return a
        b = "*" if self.stop is None else str(self.stop)
        return f"{a}:{b}"


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """An RFC 3501 ``sequence-set``, or ``$`` (RFC 5182, ``saved=True``, no ranges)."""

    ranges: tuple[SeqRange, ...] = ()
    saved: bool = False

    def contains(self, number: int, largest: int) -> bool:
        """Whether ``number`` is in the set when ``*`` means ``largest``.

        For a message-number set ``largest`` is the number of messages; for a UID set
        it is the highest UID in the mailbox (RFC 3501 §9, note on ``seq-number``).
        """
        for r in self.ranges:
            low, high = r.bounds(largest)
            if low <= number <= high:
                return True
        return False

    def iter(self, largest: int) -> Iterator[int]:
        """The members in ascending order, without duplicates, capped at ``largest``.

        A UID set such as ``1:*`` on an empty mailbox yields nothing; ``*`` on a
        non-empty one yields ``largest`` (RFC 3501 §6.4.8).
        """
        spans = sorted(r.bounds(largest) for r in self.ranges)
        last = 0
        for low, high in spans:
            yield from range(max(low, last + 1), min(high, largest) + 1)
            last = max(last, min(high, largest))

    def __str__(self) -> str:
        if self.saved:
            return "$"
        return ",".join(str(r) for r in self.ranges)


@dataclass(frozen=True, slots=True)
class Partial:
    """A ``<origin.length>`` fetch partial (RFC 3501 §6.4.5)."""

    offset: int
    length: int


class SectionText(enum.StrEnum):
    """The text part of a body section specifier (RFC 3501 §6.4.5)."""

    HEADER = "HEADER"
    HEADER_FIELDS = "HEADER.FIELDS"
    HEADER_FIELDS_NOT = "HEADER.FIELDS.NOT"
    TEXT = "TEXT"
    MIME = "MIME"


@dataclass(frozen=True, slots=True)
class Section:
    """A body section: ``[1.2.HEADER.FIELDS (FROM TO)]``; ``Section()`` is ``[]``.

    ``header_fields`` is set only for HEADER.FIELDS[.NOT]; names are upper-cased.
    ``MIME`` only occurs with a non-empty ``parts`` (the grammar forbids ``[MIME]``).
    """

    parts: tuple[int, ...] = ()
    text: SectionText | None = None
    header_fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        out = ".".join(str(p) for p in self.parts)
        if self.text is not None:
            out = f"{out}.{self.text}" if out else str(self.text)
            if self.header_fields:
                out += " (" + " ".join(self.header_fields) + ")"
        return out


class FetchItem(enum.StrEnum):
    """FETCH data items (RFC 3501 §6.4.5, RFC 3516 §4.2, RFC 7162 §3.1.4.1)."""

    FLAGS = "FLAGS"
    UID = "UID"
    INTERNALDATE = "INTERNALDATE"
    RFC822 = "RFC822"
    RFC822_HEADER = "RFC822.HEADER"
    RFC822_SIZE = "RFC822.SIZE"
    RFC822_TEXT = "RFC822.TEXT"
    ENVELOPE = "ENVELOPE"
    BODY = "BODY"  # non-extensible BODYSTRUCTURE
    BODYSTRUCTURE = "BODYSTRUCTURE"
    BODY_SECTION = "BODY[]"  # BODY[section]<partial> and BODY.PEEK[...]
    BINARY = "BINARY"  # BINARY[part]<partial> and BINARY.PEEK[...]
    BINARY_SIZE = "BINARY.SIZE"
    MODSEQ = "MODSEQ"


@dataclass(frozen=True, slots=True)
class FetchAttr:
    """One requested FETCH item.

    ``section`` is set for BODY_SECTION (possibly ``Section()``), BINARY and
    BINARY_SIZE (only ``parts`` is used there). ``peek`` is True for ``BODY.PEEK`` and
    ``BINARY.PEEK``: those do not set ``\\Seen`` (RFC 3501 §6.4.5).
    """

    item: FetchItem
    section: Section | None = None
    partial: Partial | None = None
    peek: bool = False


class StoreMode(enum.StrEnum):
    """How STORE changes the flags (RFC 3501 §6.4.6)."""

    REPLACE = "FLAGS"
    ADD = "+FLAGS"
    REMOVE = "-FLAGS"


class StatusAttr(enum.StrEnum):
    """STATUS items (RFC 3501 §6.3.10, RFC 7162 §3.1.6 HIGHESTMODSEQ, RFC 8438 SIZE,
    RFC 9051 §6.3.11 DELETED)."""

    MESSAGES = "MESSAGES"
    RECENT = "RECENT"
    UIDNEXT = "UIDNEXT"
    UIDVALIDITY = "UIDVALIDITY"
    UNSEEN = "UNSEEN"
    HIGHESTMODSEQ = "HIGHESTMODSEQ"
    SIZE = "SIZE"
    DELETED = "DELETED"


class ListSelect(enum.StrEnum):
    """LIST selection options (RFC 5258 §3.1, RFC 6154 §5.1 SPECIAL-USE)."""

    SUBSCRIBED = "SUBSCRIBED"
    REMOTE = "REMOTE"
    RECURSIVEMATCH = "RECURSIVEMATCH"
    SPECIAL_USE = "SPECIAL-USE"


class ListReturn(enum.StrEnum):
    """LIST return options other than STATUS (RFC 5258 §3.2, RFC 6154 §5.1)."""

    SUBSCRIBED = "SUBSCRIBED"
    CHILDREN = "CHILDREN"
    SPECIAL_USE = "SPECIAL-USE"


class SearchReturn(enum.StrEnum):
    """ESEARCH result options (RFC 4731 §3.1), SAVE (RFC 5182 §2.1), and CONTEXT,
    UPDATE and PARTIAL (RFC 5267 §4.1, §4.4; PARTIAL's range is `Search.partial`)."""

    MIN = "MIN"
    MAX = "MAX"
    ALL = "ALL"
    COUNT = "COUNT"
    SAVE = "SAVE"
    CONTEXT = "CONTEXT"
    UPDATE = "UPDATE"
    PARTIAL = "PARTIAL"


class SortKey(enum.StrEnum):
    """SORT criteria (RFC 5256 §3; DISPLAYFROM/DISPLAYTO RFC 5957 §3)."""

    ARRIVAL = "ARRIVAL"
    CC = "CC"
    DATE = "DATE"
    FROM = "FROM"
    SIZE = "SIZE"
    SUBJECT = "SUBJECT"
    TO = "TO"
    DISPLAYFROM = "DISPLAYFROM"
    DISPLAYTO = "DISPLAYTO"


@dataclass(frozen=True, slots=True)
class SortCriterion:
    """One sort key, with ``REVERSE`` before it (RFC 5256 §3)."""

    key: SortKey
    reverse: bool = False


class ThreadAlgorithm(enum.StrEnum):
    """THREAD algorithms (RFC 5256 §3)."""

    ORDEREDSUBJECT = "ORDEREDSUBJECT"
    REFERENCES = "REFERENCES"


@dataclass(frozen=True, slots=True)
class Qresync:
    """The ``QRESYNC`` SELECT/EXAMINE parameter (RFC 7162 §3.2.5): what the client
    last knew of the mailbox. ``known_uids`` limits what is reported (None: all);
    ``seq_match`` is the optional (message numbers, UIDs) pair of samples."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


class AclMode(enum.StrEnum):
    """SETACL: replace the rights, add (``+rights``) or remove (``-rights``)."""

    REPLACE = ""
    ADD = "+"
    REMOVE = "-"


# ------------------------------------------------------------------------ search keys


@dataclass(frozen=True, slots=True)
class SearchKey:
    """Base of the SEARCH criteria tree (RFC 3501 §6.4.4)."""


@dataclass(frozen=True, slots=True)
class SearchAll(SearchKey):
    """``ALL``."""


@dataclass(frozen=True, slots=True)
class SearchFlag(SearchKey):
    """A flag or keyword test: ``SEEN`` is ``("\\Seen", True)``, ``UNSEEN`` is
    ``("\\Seen", False)``, ``KEYWORD x`` is ``("x", True)``. ``RECENT``/``OLD`` test
    ``\\Recent``; ``NEW`` is parsed as ``And(\\Recent, not \\Seen)``.
    """

    flag: str
    present: bool


@dataclass(frozen=True, slots=True)
class SearchHeader(SearchKey):
    """``HEADER field value``; BCC, CC, FROM, SUBJECT and TO are parsed into this with
    the field name upper-cased. An empty value matches any message with the field.
    """

    field: str
    value: str


@dataclass(frozen=True, slots=True)
class SearchText(SearchKey):
    """``BODY value`` (``body_only=True``) or ``TEXT value`` (header and body)."""

    value: str
    body_only: bool


class DateField(enum.StrEnum):
    """Which date a date key compares: the internal date or the Date: header."""

    INTERNAL = "INTERNAL"
    SENT = "SENT"


class DateOp(enum.StrEnum):
    """How a date key compares (dates only, time and zone disregarded)."""

    BEFORE = "BEFORE"
    ON = "ON"
    SINCE = "SINCE"


@dataclass(frozen=True, slots=True)
class SearchDate(SearchKey):
    """BEFORE/ON/SINCE (internal date) and SENTBEFORE/SENTON/SENTSINCE."""

    field: DateField
    op: DateOp
    date: dt.date


@dataclass(frozen=True, slots=True)
class SearchSize(SearchKey):
    """``LARGER n`` (``larger=True``) or ``SMALLER n`` on RFC822.SIZE."""

    larger: bool
    size: int


@dataclass(frozen=True, slots=True)
class SearchSequence(SearchKey):
    """A bare sequence set (message numbers) or ``UID sequence-set``."""

    sequence_set: SequenceSet
    uid: bool


@dataclass(frozen=True, slots=True)
class SearchModSeq(SearchKey):
    """``MODSEQ ["/flags/\\Seen" priv|shared|all] n`` (RFC 7162 §3.1.5)."""

    modseq: int
    entry_flag: str | None = None
    entry_type: str | None = None  # "priv", "shared" or "all", lower-cased


@dataclass(frozen=True, slots=True)
class SearchNot(SearchKey):
    """``NOT key``."""

    key: SearchKey


@dataclass(frozen=True, slots=True)
class SearchOr(SearchKey):
    """``OR key1 key2``."""

    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class SearchAnd(SearchKey):
    """Several keys that must all match: a parenthesised list or the top-level list."""

    keys: tuple[SearchKey, ...]


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """Base of every parsed command; ``name`` is the IMAP verb (without ``UID``)."""

    name: ClassVar[str] = ""
    tag: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Capability(Command):
    """RFC 3501 §6.1.1."""

    name: ClassVar[str] = "CAPABILITY"


@dataclass(frozen=True, slots=True, kw_only=True)
class Noop(Command):
    """RFC 3501 §6.1.2."""

    name: ClassVar[str] = "NOOP"


@dataclass(frozen=True, slots=True, kw_only=True)
class Logout(Command):
    """RFC 3501 §6.1.3."""

    name: ClassVar[str] = "LOGOUT"


@dataclass(frozen=True, slots=True, kw_only=True)
class StartTls(Command):
    """RFC 3501 §6.2.1. The edge must drop any bytes buffered after this command
    (plaintext command injection): call `CommandReader.discard_buffered()`.
    """

    name: ClassVar[str] = "STARTTLS"


@dataclass(frozen=True, slots=True, kw_only=True)
class Authenticate(Command):
    """RFC 3501 §6.2.2; ``initial_response`` per RFC 4959 (``=`` is ``b""``), already
    base64-decoded. ``mechanism`` is upper-cased.
    """

    name: ClassVar[str] = "AUTHENTICATE"
    mechanism: str
    initial_response: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Login(Command):
    """RFC 3501 §6.2.3."""

    name: ClassVar[str] = "LOGIN"
    username: str
    password: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Id(Command):
    """RFC 2971: ``params`` is None for ``ID NIL``, else the (field, value) pairs."""

    name: ClassVar[str] = "ID"
    params: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Enable(Command):
    """RFC 5161; capability names upper-cased."""

    name: ClassVar[str] = "ENABLE"
    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Namespace(Command):
    """RFC 2342."""

    name: ClassVar[str] = "NAMESPACE"


@dataclass(frozen=True, slots=True, kw_only=True)
class Select(Command):
    """RFC 3501 §6.3.1; ``condstore`` for the ``(CONDSTORE)`` parameter (RFC 7162 §3.1.8),
    ``qresync`` for ``(QRESYNC (...))`` (RFC 7162 §3.2.5)."""

    name: ClassVar[str] = "SELECT"
    mailbox: str
    condstore: bool = False
    qresync: Qresync | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Examine(Command):
    """RFC 3501 §6.3.2; like `Select` but read-only."""

    name: ClassVar[str] = "EXAMINE"
    mailbox: str
    condstore: bool = False
    qresync: Qresync | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Create(Command):
    """RFC 3501 §6.3.3; ``special_use`` from ``(USE (\\Sent ...))`` (RFC 6154 §3)."""

    name: ClassVar[str] = "CREATE"
    mailbox: str
    special_use: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Delete(Command):
    """RFC 3501 §6.3.4."""

    name: ClassVar[str] = "DELETE"
    mailbox: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Rename(Command):
    """RFC 3501 §6.3.5."""

    name: ClassVar[str] = "RENAME"
    source: str
    destination: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribe(Command):
    """RFC 3501 §6.3.6."""

    name: ClassVar[str] = "SUBSCRIBE"
    mailbox: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Unsubscribe(Command):
    """RFC 3501 §6.3.7."""

    name: ClassVar[str] = "UNSUBSCRIBE"
    mailbox: str


@dataclass(frozen=True, slots=True, kw_only=True)
class List(Command):
    """RFC 3501 §6.3.8 with LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819).

    ``reference`` and ``patterns`` are as sent (wildcards ``*`` and ``%`` kept).
    ``return_status`` is None unless ``RETURN (STATUS (...))`` was given. A plain
    RFC 3501 LIST has empty options and one pattern.
    """

    name: ClassVar[str] = "LIST"
    reference: str
    patterns: tuple[str, ...]
    selection: frozenset[ListSelect] = frozenset()
    return_options: frozenset[ListReturn] = frozenset()
    return_status: tuple[StatusAttr, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Lsub(Command):
    """RFC 3501 §6.3.9."""

    name: ClassVar[str] = "LSUB"
    reference: str
    pattern: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Status(Command):
    """RFC 3501 §6.3.10."""

    name: ClassVar[str] = "STATUS"
    mailbox: str
    attributes: tuple[StatusAttr, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Append(Command):
    """RFC 3501 §6.3.11; ``binary`` when sent as a ``~{n}`` literal8 (RFC 3516 §4.4)."""

    name: ClassVar[str] = "APPEND"
    mailbox: str
    flags: tuple[str, ...] = ()
    internal_date: dt.datetime | None = None  # timezone-aware
    message: bytes
    binary: bool = False


@dataclass(frozen=True, slots=True)
class CatenateUrl:
    """A CATENATE part taken from a message by IMAP URL (RFC 4469 §3)."""

    url: str


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """One message of an APPEND: flags, date, and its parts (RFC 3502, RFC 4469).

    A plain literal is one ``bytes`` part; CATENATE gives text parts (``bytes``) and
    `CatenateUrl` parts in order. ``binary`` when any text came as a literal8.
    """

    flags: tuple[str, ...] = ()
    internal_date: dt.datetime | None = None
    parts: tuple[bytes | CatenateUrl, ...] = ()
    binary: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendMany(Command):
    """APPEND of several messages (MULTIAPPEND, RFC 3502) or of messages built with
    CATENATE (RFC 4469); a single plain message parses as `Append`."""

    name: ClassVar[str] = "APPEND"
    mailbox: str
    messages: tuple[AppendMessage, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Check(Command):
    """RFC 3501 §6.4.1."""

    name: ClassVar[str] = "CHECK"


@dataclass(frozen=True, slots=True, kw_only=True)
class Close(Command):
    """RFC 3501 §6.4.2."""

    name: ClassVar[str] = "CLOSE"


@dataclass(frozen=True, slots=True, kw_only=True)
class Unselect(Command):
    """RFC 3691."""

    name: ClassVar[str] = "UNSELECT"


@dataclass(frozen=True, slots=True, kw_only=True)
class Expunge(Command):
    """RFC 3501 §6.4.3; ``uids`` set for ``UID EXPUNGE`` (RFC 4315 §2.1)."""

    name: ClassVar[str] = "EXPUNGE"
    uids: SequenceSet | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Search(Command):
    """RFC 3501 §6.4.4 (``uid`` for UID SEARCH).

    ``criteria`` is one key (a `SearchAnd` when several were given at top level).
    ``charset`` is upper-cased or None. ``return_options`` is None for a plain SEARCH
    (answer ``* SEARCH``) and a set for ``RETURN (...)`` (answer ``* ESEARCH``,
    RFC 4731); ``RETURN ()`` is normalised to ``{ALL}``.
    """

    name: ClassVar[str] = "SEARCH"
    uid: bool = False
    charset: str | None = None
    criteria: SearchKey
    return_options: frozenset[SearchReturn] | None = None
    partial: tuple[int, int] | None = None  # RFC 5267 §4.4 PARTIAL low:high, low <= high


@dataclass(frozen=True, slots=True, kw_only=True)
class Sort(Command):
    """SORT and UID SORT (RFC 5256 §3), with ESORT's ``RETURN (...)`` (RFC 5267 §3):
    `return_options` and `partial` as for `Search`; None answers ``* SORT``."""

    name: ClassVar[str] = "SORT"
    uid: bool = False
    criteria: tuple[SortCriterion, ...]
    charset: str
    search: SearchKey
    return_options: frozenset[SearchReturn] | None = None
    partial: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Thread(Command):
    """THREAD and UID THREAD (RFC 5256 §3)."""

    name: ClassVar[str] = "THREAD"
    uid: bool = False
    algorithm: ThreadAlgorithm
    charset: str
    search: SearchKey


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelUpdate(Command):
    """CANCELUPDATE (RFC 5267 §4.3): stop the updates of the searches with these tags."""

    name: ClassVar[str] = "CANCELUPDATE"
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Fetch(Command):
    """RFC 3501 §6.4.5 (``uid`` for UID FETCH, which must also return UID).

    Macros ALL/FAST/FULL are expanded. ``changed_since`` from ``(CHANGEDSINCE n)``
    (RFC 7162 §3.1.4.1; it implies MODSEQ in the response); ``vanished`` for the
    ``VANISHED`` modifier (RFC 7162 §3.2.6, UID FETCH with CHANGEDSINCE only).
    """

    name: ClassVar[str] = "FETCH"
    uid: bool = False
    sequence_set: SequenceSet
    attributes: tuple[FetchAttr, ...]
    changed_since: int | None = None
    vanished: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Store(Command):
    """RFC 3501 §6.4.6; ``unchanged_since`` from ``(UNCHANGEDSINCE n)`` (RFC 7162 §3.1.3)."""

    name: ClassVar[str] = "STORE"
    uid: bool = False
    sequence_set: SequenceSet
    mode: StoreMode
    silent: bool = False
    flags: tuple[str, ...]
    unchanged_since: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Copy(Command):
    """RFC 3501 §6.4.7."""

    name: ClassVar[str] = "COPY"
    uid: bool = False
    sequence_set: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Move(Command):
    """RFC 6851."""

    name: ClassVar[str] = "MOVE"
    uid: bool = False
    sequence_set: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Idle(Command):
    """RFC 2177: after ``+ idling`` the edge reads the ``DONE`` line with
    `CommandReader.read_line`.
    """

    name: ClassVar[str] = "IDLE"


@dataclass(frozen=True, slots=True, kw_only=True)
class GetAcl(Command):
    """RFC 4314 §3.3."""

    name: ClassVar[str] = "GETACL"
    mailbox: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SetAcl(Command):
    """RFC 4314 §3.1; ``rights`` without the ``+``/``-`` prefix (which is ``mode``)."""

    name: ClassVar[str] = "SETACL"
    mailbox: str
    identifier: str
    mode: AclMode
    rights: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteAcl(Command):
    """RFC 4314 §3.2."""

    name: ClassVar[str] = "DELETEACL"
    mailbox: str
    identifier: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ListRights(Command):
    """RFC 4314 §3.4."""

    name: ClassVar[str] = "LISTRIGHTS"
    mailbox: str
    identifier: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MyRights(Command):
    """RFC 4314 §3.5."""

    name: ClassVar[str] = "MYRIGHTS"
    mailbox: str


# ---------------------------------------------------------------------------- NOTIFY


class NotifyFilter(enum.StrEnum):
    """Which mailboxes an event group covers (RFC 5465 §6)."""

    SELECTED = "SELECTED"
    SELECTED_DELAYED = "SELECTED-DELAYED"
    INBOXES = "INBOXES"
    PERSONAL = "PERSONAL"
    SUBSCRIBED = "SUBSCRIBED"
    SUBTREE = "SUBTREE"
    MAILBOXES = "MAILBOXES"


class NotifyEvent(enum.StrEnum):
    """RFC 5465 §5 events (names compare case-insensitively; kept as the RFC spells them)."""

    MESSAGE_NEW = "MessageNew"
    MESSAGE_EXPUNGE = "MessageExpunge"
    FLAG_CHANGE = "FlagChange"
    ANNOTATION_CHANGE = "AnnotationChange"
    MAILBOX_NAME = "MailboxName"
    SUBSCRIPTION_CHANGE = "SubscriptionChange"
    MAILBOX_METADATA_CHANGE = "MailboxMetadataChange"
    SERVER_METADATA_CHANGE = "ServerMetadataChange"


@dataclass(frozen=True, slots=True)
class NotifyGroup:
    """One ``(filter events)`` group; `fetch` are MessageNew's fetch attributes;
    no events at all is ``NONE`` (no notification for those mailboxes)."""

    filter: NotifyFilter
    mailboxes: tuple[str, ...] = ()
    events: frozenset[NotifyEvent] = frozenset()
    fetch: tuple[FetchAttr, ...] = ()
    unknown: tuple[str, ...] = ()  # event names we do not know (BADEVENT)


@dataclass(frozen=True, slots=True, kw_only=True)
class Notify(Command):
    """NOTIFY (RFC 5465 §3): ``NOTIFY NONE`` has `groups` None; ``NOTIFY SET [STATUS]``
    the groups in order."""

    name: ClassVar[str] = "NOTIFY"
    groups: tuple[NotifyGroup, ...] | None
    status: bool = False
