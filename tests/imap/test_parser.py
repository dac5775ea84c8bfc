"""Grammar tests for `relay.imap.parser.parse_command`, table-driven.

Every row is also fed to a `CommandReader` whole and one byte at a time; both must give
the same events, ending in the expected command or failure.
"""

from __future__ import annotations

import datetime as dt

import pytest

from relay.imap import commands as c
from relay.imap.parser import (
    CommandReader,
    Event,
    FailureKind,
    NeedContinuation,
    NeedData,
    ParseFailure,
    parse_command,
)

S = FailureKind.SYNTAX


def seq(*ranges: int | tuple[int | None, int | None] | None) -> c.SequenceSet:
    out = []
    for r in ranges:
        out.append(c.SeqRange(*r) if isinstance(r, tuple) else c.SeqRange(r, r))
    return c.SequenceSet(tuple(out))


def search(criteria: c.SearchKey, **kw: object) -> c.Search:
    return c.Search(tag="a", criteria=criteria, **kw)  # type: ignore[arg-type]


def fetch(*attrs: c.FetchAttr, ss: c.SequenceSet | None = None, **kw: object) -> c.Fetch:
    return c.Fetch(tag="a", sequence_set=ss or seq(1), attributes=attrs, **kw)  # type: ignore[arg-type]


F = c.FetchItem
FA = c.FetchAttr
SEEN = c.SearchFlag("\\Seen", True)
UTC = dt.UTC
FAST = (FA(F.FLAGS), FA(F.INTERNALDATE), FA(F.RFC822_SIZE))

VALID: list[tuple[bytes, c.Command]] = [
    # --- any state (RFC 3501 §6.1); verbs are case-insensitive
    (b"a CAPABILITY", c.Capability(tag="a")),
    (b"a capability", c.Capability(tag="a")),
    (b"A001 NOOP", c.Noop(tag="A001")),
    (b"a.b]c NoOp", c.Noop(tag="a.b]c")),
    (b"a LOGOUT", c.Logout(tag="a")),
    (b"a STARTTLS", c.StartTls(tag="a")),
    # --- authentication
    (b"a AUTHENTICATE plain", c.Authenticate(tag="a", mechanism="PLAIN")),
    (
        b"a AUTHENTICATE PLAIN AGJvYgBzZWNyZXQ=",
        c.Authenticate(tag="a", mechanism="PLAIN", initial_response=b"\x00bob\x00secret"),
    ),
    (
        b"a AUTHENTICATE EXTERNAL =",
        c.Authenticate(tag="a", mechanism="EXTERNAL", initial_response=b""),
    ),
    (b"a LOGIN bob secret", c.Login(tag="a", username="bob", password="secret")),
    (b'a LOGIN "bob" "s p\\"a\\\\ce"', c.Login(tag="a", username="bob", password='s p"a\\ce')),
    (b'a LOGIN {3}\r\nbob {6}\r\nsec"et', c.Login(tag="a", username="bob", password='sec"et')),
    (b"a LOGIN {3+}\r\nbob {2+}\r\n\r\n", c.Login(tag="a", username="bob", password="\r\n")),
    (b'a LOGIN "j\xc3\xa9r\xc3\xb4me" pw', c.Login(tag="a", username="jérôme", password="pw")),
    (
        b"a LOGIN alice*secretariat@x.fr pw",
        c.Login(tag="a", username="alice*secretariat@x.fr", password="pw"),
    ),
    (b'a LOGIN "" ""', c.Login(tag="a", username="", password="")),
    # --- ID, ENABLE, NAMESPACE
    (b"a ID NIL", c.Id(tag="a", params=None)),
    (
        b'a ID ("name" "Thunderbird" "version" NIL)',
        c.Id(tag="a", params=(("name", "Thunderbird"), ("version", None))),
    ),
    (
        b"a ENABLE CONDSTORE utf8=accept",
        c.Enable(tag="a", capabilities=("CONDSTORE", "UTF8=ACCEPT")),
    ),
    (b"a NAMESPACE", c.Namespace(tag="a")),
    # --- mailboxes
    (b"a SELECT inbox", c.Select(tag="a", mailbox="INBOX")),
    (b'a SELECT "InBoX"', c.Select(tag="a", mailbox="INBOX")),
    (b"a SELECT INBOX/Sub", c.Select(tag="a", mailbox="INBOX/Sub")),
    (b"a SELECT &AOk-t&AOk-", c.Select(tag="a", mailbox="&AOk-t&AOk-")),
    (b"a SELECT Archives (CONDSTORE)", c.Select(tag="a", mailbox="Archives", condstore=True)),
    (b"a EXAMINE {5}\r\ninbox", c.Examine(tag="a", mailbox="INBOX")),
    (b"a EXAMINE x (condstore)", c.Examine(tag="a", mailbox="x", condstore=True)),
    # RFC 7162 §3.2.5.1 examples
    (
        b"a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))",
        c.Select(
            tag="a",
            mailbox="INBOX",
            qresync=c.Qresync(67890007, 20050715194045000, seq(41, (43, 211), (214, 541))),
        ),
    ),
    (
        b"a EXAMINE x (QRESYNC (67890007 90060115194045000 1:29997 (5000,7500 15000,22500)))",
        c.Examine(
            tag="a",
            mailbox="x",
            qresync=c.Qresync(
                67890007,
                90060115194045000,
                seq((1, 29997)),
                (seq(5000, 7500), seq(15000, 22500)),
            ),
        ),
    ),
    (
        b"a SELECT x (CONDSTORE QRESYNC (1 2 (1 3)))",
        c.Select(
            tag="a",
            mailbox="x",
            condstore=True,
            qresync=c.Qresync(1, 2, None, (seq(1), seq(3))),
        ),
    ),
    (b"a CREATE Projets", c.Create(tag="a", mailbox="Projets")),
    (
        b"a CREATE Envoy&AOk-s (USE (\\sent \\Archive \\X-Custom))",
        c.Create(tag="a", mailbox="Envoy&AOk-s", special_use=("\\Sent", "\\Archive", "\\X-Custom")),
    ),
    (b"a DELETE old", c.Delete(tag="a", mailbox="old")),
    (b'a RENAME "a b" c', c.Rename(tag="a", source="a b", destination="c")),
    (b"a SUBSCRIBE x", c.Subscribe(tag="a", mailbox="x")),
    (b"a UNSUBSCRIBE x", c.Unsubscribe(tag="a", mailbox="x")),
    (b'a LIST "" *', c.List(tag="a", reference="", patterns=("*",))),
    (b'a LIST "" %', c.List(tag="a", reference="", patterns=("%",))),
    (b"a LIST Partages/ Part%/*]", c.List(tag="a", reference="Partages/", patterns=("Part%/*]",))),
    (b'a LIST () "" "*"', c.List(tag="a", reference="", patterns=("*",))),
    (
        b'a LIST (SUBSCRIBED RECURSIVEMATCH special-use) "" ("INBOX" %/x)',
        c.List(
            tag="a",
            reference="",
            patterns=("INBOX", "%/x"),
            selection=frozenset(
                {c.ListSelect.SUBSCRIBED, c.ListSelect.RECURSIVEMATCH, c.ListSelect.SPECIAL_USE}
            ),
        ),
    ),
    (
        b'a LIST "" * RETURN (SUBSCRIBED CHILDREN SPECIAL-USE STATUS (MESSAGES UNSEEN SIZE))',
        c.List(
            tag="a",
            reference="",
            patterns=("*",),
            return_options=frozenset(c.ListReturn),
            return_status=(c.StatusAttr.MESSAGES, c.StatusAttr.UNSEEN, c.StatusAttr.SIZE),
        ),
    ),
    (
        b'a LIST (REMOTE) "" * RETURN ()',
        c.List(tag="a", reference="", patterns=("*",), selection=frozenset({c.ListSelect.REMOTE})),
    ),
    (b'a LSUB "" *', c.Lsub(tag="a", reference="", pattern="*")),
    (
        b"a STATUS inbox (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ SIZE DELETED)",
        c.Status(tag="a", mailbox="INBOX", attributes=tuple(c.StatusAttr)),
    ),
    # --- APPEND (RFC 3501 §6.3.11, RFC 7888, RFC 3516)
    (b"a APPEND x {5}\r\nhello", c.Append(tag="a", mailbox="x", message=b"hello")),
    (b"a APPEND x {0}\r\n", c.Append(tag="a", mailbox="x", message=b"")),
    (b"a APPEND x {8+}\r\nl1\r\nl2\r\n", c.Append(tag="a", mailbox="x", message=b"l1\r\nl2\r\n")),
    (
        b"a APPEND x ~{3}\r\n\x00\x01\x02",
        c.Append(tag="a", mailbox="x", message=b"\x00\x01\x02", binary=True),
    ),
    (b"a APPEND x () {1}\r\nm", c.Append(tag="a", mailbox="x", message=b"m")),
    (b"a APPEND x {2}\r\n\x00m", c.Append(tag="a", mailbox="x", message=b"\x00m")),
    (
        b'a APPEND Sent (\\Seen $Forwarded) " 7-Jul-1996 02:44:25 -0700" {1+}\r\nm',
        c.Append(
            tag="a",
            mailbox="Sent",
            flags=("\\Seen", "$Forwarded"),
            internal_date=dt.datetime(
                1996, 7, 7, 2, 44, 25, tzinfo=dt.timezone(-dt.timedelta(hours=7))
            ),
            message=b"m",
        ),
    ),
    (
        b'a APPEND x "17-Jul-1996 02:44:25 +0000" {1}\r\nm',
        c.Append(
            tag="a",
            mailbox="x",
            internal_date=dt.datetime(1996, 7, 17, 2, 44, 25, tzinfo=UTC),
            message=b"m",
        ),
    ),
    # --- selected state
    (b"a CHECK", c.Check(tag="a")),
    (b"a CLOSE", c.Close(tag="a")),
    (b"a UNSELECT", c.Unselect(tag="a")),
    (b"a EXPUNGE", c.Expunge(tag="a")),
    (b"a UID EXPUNGE 3:5,9", c.Expunge(tag="a", uids=seq((3, 5), 9))),
    (b"a uid expunge *", c.Expunge(tag="a", uids=seq(None))),
    (b"a IDLE", c.Idle(tag="a")),
    # --- SEARCH, every RFC 3501 key (§6.4.4) and MODSEQ (RFC 7162 §3.1.5)
    (b"a SEARCH ALL", search(c.SearchAll())),
    (b"a SEARCH answered", search(c.SearchFlag("\\Answered", True))),
    (b"a SEARCH DELETED", search(c.SearchFlag("\\Deleted", True))),
    (b"a SEARCH DRAFT", search(c.SearchFlag("\\Draft", True))),
    (b"a SEARCH FLAGGED", search(c.SearchFlag("\\Flagged", True))),
    (b"a SEARCH SEEN", search(SEEN)),
    (b"a SEARCH RECENT", search(c.SearchFlag("\\Recent", True))),
    (b"a SEARCH OLD", search(c.SearchFlag("\\Recent", False))),
    (
        b"a SEARCH NEW",
        search(c.SearchAnd((c.SearchFlag("\\Recent", True), c.SearchFlag("\\Seen", False)))),
    ),
    (b"a SEARCH UNANSWERED", search(c.SearchFlag("\\Answered", False))),
    (b"a SEARCH UNDELETED", search(c.SearchFlag("\\Deleted", False))),
    (b"a SEARCH UNDRAFT", search(c.SearchFlag("\\Draft", False))),
    (b"a SEARCH UNFLAGGED", search(c.SearchFlag("\\Flagged", False))),
    (b"a SEARCH UNSEEN", search(c.SearchFlag("\\Seen", False))),
    (b"a SEARCH KEYWORD $Junk", search(c.SearchFlag("$Junk", True))),
    (b"a SEARCH UNKEYWORD urgent", search(c.SearchFlag("urgent", False))),
    (b"a SEARCH BCC bob", search(c.SearchHeader("BCC", "bob"))),
    (b"a SEARCH CC bob", search(c.SearchHeader("CC", "bob"))),
    (b'a SEARCH FROM "Dr Martin"', search(c.SearchHeader("FROM", "Dr Martin"))),
    (b"a SEARCH TO x", search(c.SearchHeader("TO", "x"))),
    (b"a SEARCH SUBJECT {4}\r\nINS:", search(c.SearchHeader("SUBJECT", "INS:"))),
    (b'a SEARCH HEADER x-ins ""', search(c.SearchHeader("X-INS", ""))),
    (b"a SEARCH BODY word", search(c.SearchText("word", body_only=True))),
    (b"a SEARCH TEXT word", search(c.SearchText("word", body_only=False))),
    (
        b"a SEARCH BEFORE 1-Feb-2024",
        search(c.SearchDate(c.DateField.INTERNAL, c.DateOp.BEFORE, dt.date(2024, 2, 1))),
    ),
    (
        b'a SEARCH ON "15-mar-2023"',
        search(c.SearchDate(c.DateField.INTERNAL, c.DateOp.ON, dt.date(2023, 3, 15))),
    ),
    (
        b"a SEARCH SINCE 29-Feb-2024",
        search(c.SearchDate(c.DateField.INTERNAL, c.DateOp.SINCE, dt.date(2024, 2, 29))),
    ),
    (
        b"a SEARCH SENTBEFORE 1-Jan-2000",
        search(c.SearchDate(c.DateField.SENT, c.DateOp.BEFORE, dt.date(2000, 1, 1))),
    ),
    (
        b"a SEARCH SENTON 1-Jan-2000",
        search(c.SearchDate(c.DateField.SENT, c.DateOp.ON, dt.date(2000, 1, 1))),
    ),
    (
        b"a SEARCH SENTSINCE 1-Jan-2000",
        search(c.SearchDate(c.DateField.SENT, c.DateOp.SINCE, dt.date(2000, 1, 1))),
    ),
    (b"a SEARCH LARGER 1000", search(c.SearchSize(True, 1000))),
    (b"a SEARCH SMALLER 0", search(c.SearchSize(False, 0))),
    (b"a SEARCH UID 1:*", search(c.SearchSequence(seq((1, None)), uid=True))),
    (b"a SEARCH 2,4:6", search(c.SearchSequence(seq(2, (4, 6)), uid=False))),
    (b"a SEARCH *", search(c.SearchSequence(seq(None), uid=False))),
    (b"a SEARCH $", search(c.SearchSequence(c.SequenceSet(saved=True), uid=False))),
    (b"a SEARCH NOT SEEN", search(c.SearchNot(SEEN))),
    (b"a SEARCH OR SEEN DRAFT", search(c.SearchOr(SEEN, c.SearchFlag("\\Draft", True)))),
    (b"a SEARCH (SEEN)", search(SEEN)),
    (
        b"a SEARCH SEEN (OR (DRAFT FLAGGED) NOT (1:3 UID 5)) LARGER 5",
        search(
            c.SearchAnd(
                (
                    SEEN,
                    c.SearchOr(
                        c.SearchAnd(
                            (c.SearchFlag("\\Draft", True), c.SearchFlag("\\Flagged", True))
                        ),
                        c.SearchNot(
                            c.SearchAnd(
                                (
                                    c.SearchSequence(seq((1, 3)), uid=False),
                                    c.SearchSequence(seq(5), uid=True),
                                )
                            )
                        ),
                    ),
                    c.SearchSize(True, 5),
                )
            )
        ),
    ),
    (b"a SEARCH MODSEQ 620162338", search(c.SearchModSeq(620162338))),
    (
        b'a SEARCH MODSEQ "/flags/\\\\draft" all 620162338',
        search(c.SearchModSeq(620162338, "\\Draft", "all")),
    ),
    (
        b'a SEARCH CHARSET iso-8859-1 SUBJECT "caf\xe9"',
        search(c.SearchHeader("SUBJECT", "café"), charset="ISO-8859-1"),
    ),
    (
        b"a SEARCH CHARSET UTF-8 TEXT {4}\r\nd\xc3\xa9j",
        search(c.SearchText("déj", False), charset="UTF-8"),
    ),
    (
        b"a SEARCH RETURN (MIN MAX COUNT) UNSEEN",
        search(
            c.SearchFlag("\\Seen", False),
            return_options=frozenset(
                {c.SearchReturn.MIN, c.SearchReturn.MAX, c.SearchReturn.COUNT}
            ),
        ),
    ),
    (
        b"a SEARCH RETURN () ALL",
        search(c.SearchAll(), return_options=frozenset({c.SearchReturn.ALL})),
    ),
    (
        b"a UID SEARCH RETURN (SAVE) CHARSET US-ASCII ALL",
        c.Search(
            tag="a",
            uid=True,
            charset="US-ASCII",
            criteria=c.SearchAll(),
            return_options=frozenset({c.SearchReturn.SAVE}),
        ),
    ),
    # --- FETCH (RFC 3501 §6.4.5, RFC 3516, RFC 7162)
    (b"a FETCH 1 FAST", fetch(*FAST)),
    (b"a FETCH 1 all", fetch(*FAST, FA(F.ENVELOPE))),
    (b"a FETCH 1 FULL", fetch(*FAST, FA(F.ENVELOPE), FA(F.BODY))),
    (b"a FETCH 1:* FLAGS", fetch(FA(F.FLAGS), ss=seq((1, None)))),
    (b"a FETCH *:4,7,9:10 UID", fetch(FA(F.UID), ss=seq((None, 4), 7, (9, 10)))),
    (b"a FETCH $ (UID)", fetch(FA(F.UID), ss=c.SequenceSet(saved=True))),
    (
        b"a FETCH 1 (FLAGS UID INTERNALDATE RFC822 RFC822.HEADER RFC822.SIZE RFC822.TEXT "
        b"ENVELOPE BODY BODYSTRUCTURE MODSEQ)",
        fetch(
            *(
                FA(i)
                for i in (
                    F.FLAGS,
                    F.UID,
                    F.INTERNALDATE,
                    F.RFC822,
                    F.RFC822_HEADER,
                    F.RFC822_SIZE,
                    F.RFC822_TEXT,
                    F.ENVELOPE,
                    F.BODY,
                    F.BODYSTRUCTURE,
                    F.MODSEQ,
                )
            )
        ),
    ),
    (b"a FETCH 1 BODY[]", fetch(FA(F.BODY_SECTION, c.Section()))),
    (
        b"a FETCH 1 body.peek[]<0.2048>",
        fetch(FA(F.BODY_SECTION, c.Section(), c.Partial(0, 2048), peek=True)),
    ),
    (b"a FETCH 1 BODY[HEADER]", fetch(FA(F.BODY_SECTION, c.Section(text=c.SectionText.HEADER)))),
    (
        b"a FETCH 1 BODY[TEXT]<10.5>",
        fetch(FA(F.BODY_SECTION, c.Section(text=c.SectionText.TEXT), c.Partial(10, 5))),
    ),
    (b"a FETCH 1 BODY[1]", fetch(FA(F.BODY_SECTION, c.Section((1,))))),
    (b"a FETCH 1 BODY[1.2.3]", fetch(FA(F.BODY_SECTION, c.Section((1, 2, 3))))),
    (b"a FETCH 1 BODY[2.MIME]", fetch(FA(F.BODY_SECTION, c.Section((2,), c.SectionText.MIME)))),
    (b"a FETCH 1 BODY[4.2.TEXT]", fetch(FA(F.BODY_SECTION, c.Section((4, 2), c.SectionText.TEXT)))),
    (b"a FETCH 1 BODY[3.header]", fetch(FA(F.BODY_SECTION, c.Section((3,), c.SectionText.HEADER)))),
    (
        b'a FETCH 1 (BODY.PEEK[HEADER.FIELDS (From to "Subject")])',
        fetch(
            FA(
                F.BODY_SECTION,
                c.Section((), c.SectionText.HEADER_FIELDS, ("FROM", "TO", "SUBJECT")),
                peek=True,
            )
        ),
    ),
    (
        b"a FETCH 1 BODY[1.HEADER.FIELDS.NOT (Received)]",
        fetch(FA(F.BODY_SECTION, c.Section((1,), c.SectionText.HEADER_FIELDS_NOT, ("RECEIVED",)))),
    ),
    (b"a FETCH 1 BINARY[]", fetch(FA(F.BINARY, c.Section()))),
    (
        b"a FETCH 1 BINARY.PEEK[1.2]<0.10>",
        fetch(FA(F.BINARY, c.Section((1, 2)), c.Partial(0, 10), peek=True)),
    ),
    (b"a FETCH 1 BINARY.SIZE[1]", fetch(FA(F.BINARY_SIZE, c.Section((1,))))),
    (
        b"a FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)",
        fetch(FA(F.FLAGS), ss=seq((1, None)), changed_since=12345),
    ),
    (b"a FETCH 1 FLAGS (changedsince 0)", fetch(FA(F.FLAGS), changed_since=0)),
    (
        # RFC 7162 §3.2.6 example
        b"a UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)",
        c.Fetch(
            tag="a",
            uid=True,
            sequence_set=seq((300, 500)),
            attributes=(FA(F.FLAGS),),
            changed_since=12345,
            vanished=True,
        ),
    ),
    (
        b"a UID FETCH 1:4294967295 (UID FLAGS)",
        c.Fetch(
            tag="a",
            uid=True,
            sequence_set=seq((1, 4294967295)),
            attributes=(FA(F.UID), FA(F.FLAGS)),
        ),
    ),
    # --- STORE (RFC 3501 §6.4.6, RFC 7162 §3.1.3)
    (
        b"a STORE 1 FLAGS (\\Seen)",
        c.Store(tag="a", sequence_set=seq(1), mode=c.StoreMode.REPLACE, flags=("\\Seen",)),
    ),
    (
        b"a STORE 2:4 +FLAGS.SILENT (\\deleted $Label1)",
        c.Store(
            tag="a",
            sequence_set=seq((2, 4)),
            mode=c.StoreMode.ADD,
            silent=True,
            flags=("\\Deleted", "$Label1"),
        ),
    ),
    (
        b"a STORE 1 -flags \\Seen \\Flagged",
        c.Store(
            tag="a", sequence_set=seq(1), mode=c.StoreMode.REMOVE, flags=("\\Seen", "\\Flagged")
        ),
    ),
    (
        b"a STORE 1 FLAGS ()",
        c.Store(tag="a", sequence_set=seq(1), mode=c.StoreMode.REPLACE, flags=()),
    ),
    (
        b"a UID STORE 7 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Seen)",
        c.Store(
            tag="a",
            uid=True,
            sequence_set=seq(7),
            mode=c.StoreMode.ADD,
            silent=True,
            flags=("\\Seen",),
            unchanged_since=320162338,
        ),
    ),
    # --- COPY, MOVE
    (b"a COPY 1:3 Archives", c.Copy(tag="a", sequence_set=seq((1, 3)), mailbox="Archives")),
    (b'a UID COPY 5 "INBOX"', c.Copy(tag="a", uid=True, sequence_set=seq(5), mailbox="INBOX")),
    (b"a MOVE $ Trash", c.Move(tag="a", sequence_set=c.SequenceSet(saved=True), mailbox="Trash")),
    (b"a UID MOVE 1,2 inbox", c.Move(tag="a", uid=True, sequence_set=seq(1, 2), mailbox="INBOX")),
    # --- ACL (RFC 4314)
    (b"a GETACL INBOX", c.GetAcl(tag="a", mailbox="INBOX")),
    (b"a MYRIGHTS x", c.MyRights(tag="a", mailbox="x")),
    # --- SORT / THREAD (RFC 5256), CONTEXT (RFC 5267); more in test_parser_ext.py
    (
        b"a SORT (DATE) UTF-8 ALL",
        c.Sort(
            tag="a",
            criteria=(c.SortCriterion(c.SortKey.DATE),),
            charset="UTF-8",
            search=c.SearchAll(),
        ),
    ),
    (
        b"a THREAD REFERENCES UTF-8 ALL",
        c.Thread(
            tag="a",
            algorithm=c.ThreadAlgorithm.REFERENCES,
            charset="UTF-8",
            search=c.SearchAll(),
        ),
    ),
    (b'a CANCELUPDATE "t1"', c.CancelUpdate(tag="a", tags=("t1",))),
    # --- NOTIFY (RFC 5465); more in test_parser_ext.py
    (b"a NOTIFY NONE", c.Notify(tag="a", groups=None)),
    # --- MULTIAPPEND (RFC 3502), CATENATE (RFC 4469)
    (
        b'a APPEND x (\\Seen) {1}\r\nA CATENATE (URL "/x/;uid=1" TEXT {1}\r\nB)',
        c.AppendMany(
            tag="a",
            mailbox="x",
            messages=(
                c.AppendMessage(flags=("\\Seen",), parts=(b"A",)),
                c.AppendMessage(parts=(c.CatenateUrl("/x/;uid=1"), b"B")),
            ),
        ),
    ),
    (b"a LISTRIGHTS x bob", c.ListRights(tag="a", mailbox="x", identifier="bob")),
    (b"a DELETEACL x bob", c.DeleteAcl(tag="a", mailbox="x", identifier="bob")),
    (
        b"a SETACL x bob lrswi",
        c.SetAcl(tag="a", mailbox="x", identifier="bob", mode=c.AclMode.REPLACE, rights="lrswi"),
    ),
    (
        b"a SETACL x bob +w",
        c.SetAcl(tag="a", mailbox="x", identifier="bob", mode=c.AclMode.ADD, rights="w"),
    ),
    (
        b'a SETACL x "-bob" "-l"',
        c.SetAcl(tag="a", mailbox="x", identifier="-bob", mode=c.AclMode.REMOVE, rights="l"),
    ),
]

INVALID: list[tuple[bytes, str | None, FailureKind]] = [
    # tags and verbs
    (b"", None, S),
    (b"+ NOOP", None, S),
    (b"* NOOP", None, S),
    (b"(a NOOP", None, S),
    (b" NOOP", None, S),
    (b"a", "a", S),
    (b"a ", "a", S),
    (b"a  NOOP", "a", S),
    (b"a FOO", "a", FailureKind.UNKNOWN_COMMAND),
    (b"a UID NOOP", "a", FailureKind.UNKNOWN_COMMAND),
    (b"a UID", "a", S),
    (b"a NOOP extra", "a", S),
    (b"a NOOP(", "a", S),
    (b"a NOOP ", "a", S),
    # strings
    (b"a LOGIN bob", "a", S),
    (b'a LOGIN "bob pw', "a", S),
    (b'a LOGIN "b\\ob" pw', "a", S),
    (b"a LOGIN {5}\r\nbob pw", "a", S),
    (b"a LOGIN {3}bob pw", "a", S),
    (b"a LOGIN {3}\r\nb\x00b pw", "a", S),
    (b"a LOGIN b\xffb pw", "a", S),
    (b'a LOGIN "\xff\xfe" pw', "a", S),
    (b"a LOGIN ~{3}\r\nbob pw", "a", S),
    (b"a LOGIN (bob) pw", "a", S),
    # authentication, ID, ENABLE
    (b"a AUTHENTICATE", "a", S),
    (b"a AUTHENTICATE PLAIN !!!!", "a", S),
    (b"a AUTHENTICATE PLAIN AGJvYg", "a", S),
    (b'a ID ("name")', "a", S),
    (b"a ID ({1}\r\n\x00 NIL)", "a", S),
    (b"a ID ()", "a", S),
    (b"a ID " + b"(" + b" ".join(b'"k%d" NIL' % i for i in range(31)) + b")", "a", S),
    (b"a ENABLE", "a", S),
    # mailboxes
    (b"a SELECT", "a", S),
    (b"a SELECT x (QRESYNC)", "a", S),
    (b"a SELECT x CONDSTORE", "a", S),
    (b"a CREATE x (USE (Sent))", "a", S),
    (b"a CREATE x (FOO (\\Sent))", "a", S),
    (b"a RENAME x", "a", S),
    (b'a LIST ""', "a", S),
    (b'a LIST (RECURSIVEMATCH) "" *', "a", S),
    (b'a LIST (FOO) "" *', "a", S),
    (b'a LIST "" * RETURN (FOO)', "a", S),
    (b'a LIST "" * RETURN', "a", S),
    (b'a LIST "" ()', "a", S),
    (b"a STATUS x (FOO)", "a", S),
    (b"a STATUS x ()", "a", S),
    (b"a STATUS x MESSAGES", "a", S),
    # APPEND
    (b"a APPEND x", "a", S),
    (b"a APPEND x abc", "a", S),
    (b'a APPEND x "hello"', "a", S),
    (b'a APPEND x "31-Feb-2024 00:00:00 +0000" {1}\r\nm', "a", S),
    (b'a APPEND x "1-Jan-2024 25:00:00 +0000" {1}\r\nm', "a", S),
    (b'a APPEND x "1-Jan-2024 00:00:00 +2400" {1}\r\nm', "a", S),
    (b'a APPEND x "1-Foo-2024 00:00:00 +0000" {1}\r\nm', "a", S),
    (b"a APPEND x (\\Recent) {1}\r\nm", "a", S),
    (b"a APPEND x (\\Seen {1}\r\nm", "a", S),
    (b"a APPEND x {1}\r\nmx", "a", S),
    # sequence sets and numbers
    (b"a FETCH 0 FLAGS", "a", S),
    (b"a FETCH 01 FLAGS", "a", S),
    (b"a FETCH 1:0 FLAGS", "a", S),
    (b"a FETCH 4294967296 FLAGS", "a", S),
    (b"a FETCH 1:x FLAGS", "a", S),
    (b"a FETCH 1, FLAGS", "a", S),
    (b"a FETCH ,1 FLAGS", "a", S),
    (b"a FETCH 1,$ FLAGS", "a", S),
    (b"a FETCH $1 FLAGS", "a", S),
    (b"a FETCH -1 FLAGS", "a", S),
    # FETCH items
    (b"a FETCH 1", "a", S),
    (b"a FETCH 1 FOO", "a", S),
    (b"a FETCH 1 (FLAGS", "a", S),
    (b"a FETCH 1 ()", "a", S),
    (b"a FETCH 1 (ALL)", "a", S),
    (b"a FETCH 1 FLAGS UID", "a", S),
    (b"a FETCH 1 BODY[", "a", S),
    (b"a FETCH 1 BODY[FOO]", "a", S),
    (b"a FETCH 1 BODY[MIME]", "a", S),
    (b"a FETCH 1 BODY[0]", "a", S),
    (b"a FETCH 1 BODY[1.]", "a", S),
    (b"a FETCH 1 BODY[HEADER.FIELDS]", "a", S),
    (b"a FETCH 1 BODY[HEADER.FIELDS ()]", "a", S),
    (b"a FETCH 1 BODY[]<0.0>", "a", S),
    (b"a FETCH 1 BODY[]<0>", "a", S),
    (b"a FETCH 1 BODY.PEEK", "a", S),
    (b"a FETCH 1 BINARY", "a", S),
    (b"a FETCH 1 BINARY[TEXT]", "a", S),
    (b"a FETCH 1 BINARY.SIZE", "a", S),
    (b"a FETCH 1 FLAGS (CHANGEDSINCE x)", "a", S),
    (b"a FETCH 1 FLAGS (VANISHED)", "a", S),
    (b"a FETCH 1 FLAGS (CHANGEDSINCE 9223372036854775808)", "a", S),
    # STORE
    (b"a STORE 1 FLAGS", "a", S),
    (b"a STORE 1 XFLAGS \\Seen", "a", S),
    (b"a STORE 1 FLAGS.LOUD \\Seen", "a", S),
    (b"a STORE 1 +FLAGS (\\Recent)", "a", S),
    # unknown system flags are refused, not stored (as Dovecot answers)
    (b"a STORE 1 +FLAGS (\\Bogus)", "a", S),
    (b"a STORE 1 +FLAGS \\Seen \\bogus", "a", S),
    (b"a STORE 1 FLAGS (\\*)", "a", S),
    (b"a APPEND x (\\Seen \\Bogus) {1}\r\nm", "a", S),
    # QRESYNC (RFC 7162 §3.2.5, §3.2.6)
    (b"a FETCH 1 FLAGS (CHANGEDSINCE 1 VANISHED)", "a", S),
    (b"a UID FETCH 1 FLAGS (VANISHED)", "a", S),
    (b"a UID FETCH 1 FLAGS (CHANGEDSINCE 1 VANISHED VANISHED)", "a", S),
    (b"a SELECT x (QRESYNC (1))", "a", S),
    (b"a SELECT x (QRESYNC (0 1))", "a", S),
    (b"a SELECT x (QRESYNC (1 0))", "a", S),
    (b"a SELECT x (QRESYNC (1 2 $))", "a", S),
    (b"a SELECT x (QRESYNC (1 2 1:5 (1:2)))", "a", S),
    (b"a SELECT x (QRESYNC (1 2) QRESYNC (1 2))", "a", S),
    (b"a STORE 1 (UNCHANGEDSINCE) FLAGS \\Seen", "a", S),
    (b"a STORE 1 (FOO 1) FLAGS \\Seen", "a", S),
    (b"a STORE 1 FLAGS (a b", "a", S),
    # SEARCH
    (b"a SEARCH", "a", S),
    (b"a SEARCH FOO", "a", S),
    (b"a SEARCH SEEN ", "a", S),
    (b"a SEARCH FROM", "a", S),
    (b"a SEARCH BEFORE 32-Jan-2024", "a", S),
    (b"a SEARCH SINCE 1-Foo-2024", "a", S),
    (b"a SEARCH SINCE 2024-01-01", "a", S),
    (b'a SEARCH SINCE "1-Jan-2024', "a", S),
    (b"a SEARCH OR SEEN", "a", S),
    (b"a SEARCH NOT", "a", S),
    (b"a SEARCH (SEEN", "a", S),
    (b"a SEARCH ()", "a", S),
    (b"a SEARCH LARGER x", "a", S),
    (b'a SEARCH MODSEQ "/foo/x" all 1', "a", S),
    (b'a SEARCH MODSEQ "/flags/\\\\Seen" mine 1', "a", S),
    (b"a SEARCH " + b"NOT " * 40 + b"ALL", "a", S),
    (b"a SEARCH " + b"(" * 40 + b"ALL" + b")" * 40, "a", S),
    (b"a SEARCH CHARSET KOI8-R ALL", "a", FailureKind.BAD_CHARSET),
    (b'a SEARCH CHARSET US-ASCII SUBJECT "caf\xc3\xa9"', "a", S),
    (b"a SEARCH RETURN (FOO) ALL", "a", S),
    (b"a SEARCH RETURN MIN ALL", "a", S),
    # other selected-state commands
    (b"a UID EXPUNGE", "a", S),
    (b"a EXPUNGE 1", "a", S),
    (b"a COPY 1", "a", S),
    (b"a MOVE x y", "a", S),
    # ACL
    (b"a SETACL x bob LR", "a", S),
    (b"a SETACL x bob", "a", S),
    (b"a GETACL", "a", S),
    (b"a LISTRIGHTS x", "a", S),
]


def _drain(reader: CommandReader) -> list[Event]:
    events: list[Event] = []
    for _ in range(10_000):
        event = reader.next_event()
        if isinstance(event, NeedData):
            return events
        events.append(event)
    raise AssertionError("reader did not settle")


def _events(data: bytes, *, bytewise: bool) -> list[Event]:
    reader = CommandReader(max_line_bytes=8192, max_literal_bytes=1 << 20)
    out: list[Event] = []
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for chunk in chunks:
        reader.feed(chunk)
        out.extend(_drain(reader))
    return out


def _wire(data: bytes) -> bytes:
    return data + b"\r\n"


@pytest.mark.parametrize(("data", "expected"), VALID, ids=[repr(v[0][:48]) for v in VALID])
def test_valid_command(data: bytes, expected: c.Command) -> None:
    assert parse_command(_wire(data)) == expected
    whole = _events(_wire(data), bytewise=False)
    assert whole == _events(_wire(data), bytewise=True)
    assert whole[-1] == expected
    assert all(isinstance(e, NeedContinuation) for e in whole[:-1])


@pytest.mark.parametrize(("data", "tag", "kind"), INVALID, ids=[repr(v[0][:48]) for v in INVALID])
def test_invalid_command(data: bytes, tag: str | None, kind: FailureKind) -> None:
    result = parse_command(data)
    assert isinstance(result, ParseFailure), result
    assert (result.tag, result.kind) == (tag, kind)
    assert result.message and result.message.isascii()
    assert "\r" not in result.message and "\n" not in result.message
    whole = _events(_wire(data), bytewise=False)
    assert whole == _events(_wire(data), bytewise=True)
    failures = [e for e in whole if isinstance(e, ParseFailure)]
    # Framing may split an input into several commands (e.g. an embedded CRLF);
    # the first failure is the one for this tag.
    assert failures, whole
    assert (failures[0].tag, failures[0].kind) == (tag, kind)


@pytest.mark.parametrize(
    "data",
    [b"a NOOP\r\nb NOOP", b"a APPEND x {3}", b"a APPEND x {3}\r\nab", b"a LOGIN {10}\r\nbob pw"],
)
def test_framing_errors_of_the_pure_function(data: bytes) -> None:
    # The reader never hands such input to parse_command; the function still fails
    # cleanly on it.
    result = parse_command(data)
    assert isinstance(result, ParseFailure) and (result.tag, result.kind) == ("a", S)


def test_final_crlf_may_be_omitted() -> None:
    assert parse_command(b"a LOGIN {3}\r\nbob pw") == c.Login(
        tag="a", username="bob", password="pw"
    )
    assert parse_command(b"a NOOP") == c.Noop(tag="a")


def test_failure_messages_do_not_echo_client_bytes() -> None:
    result = parse_command(b"a SEARCH XYZZY<script>")
    assert isinstance(result, ParseFailure)
    assert "XYZZY" not in result.message and "script" not in result.message


def test_failure_status_and_code() -> None:
    bad = parse_command(b"a FOO")
    charset = parse_command(b"a SEARCH CHARSET X ALL")
    assert isinstance(bad, ParseFailure) and isinstance(charset, ParseFailure)
    assert (bad.status, bad.code) == ("BAD", None)
    assert (charset.status, charset.code) == ("NO", "BADCHARSET")


def test_search_nesting_at_limit_is_accepted() -> None:
    result = parse_command(b"a SEARCH " + b"NOT " * 30 + b"ALL")
    assert isinstance(result, c.Search)
    key = result.criteria
    depth = 0
    while isinstance(key, c.SearchNot):
        key, depth = key.key, depth + 1
    assert depth == 30 and key == c.SearchAll()


def test_every_command_class_is_covered_by_the_table() -> None:
    covered = {type(cmd) for _, cmd in VALID}
    defined = {
        obj
        for obj in vars(c).values()
        if isinstance(obj, type) and issubclass(obj, c.Command) and obj is not c.Command
    }
    assert defined == covered
