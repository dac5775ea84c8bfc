"""MULTIAPPEND (RFC 3502), CATENATE (RFC 4469) and BINARY (RFC 3516) over the wire, on
both engines: atomic multi-message APPEND, URLs resolved with the person's own rights,
binary content stored safely."""

from __future__ import annotations

import asyncio
import json

from relay.store.store import AuditFilter
from tests.harness import SHARED, RunningDaemon
from tests.imap.support import Raw, deliver, letter, shared


def lit(data: bytes, *, binary: bool = False) -> bytes:
    """A non-synchronizing literal (LITERAL+, RFC 7888), or a literal8 (``~{n+}``)."""
    return (b"~" if binary else b"") + b"{%d+}\r\n" % len(data) + data


def send(raw: Raw, tag: str, command: bytes) -> tuple[list[bytes], bytes]:
    raw.sock.sendall(tag.encode() + b" " + command + b"\r\n")
    final = raw.until(tag.encode() + b" ")
    return raw.seen, final


ONE = b"From: a@x.fr\r\nSubject: one\r\n\r\nbody one\r\n"
TWO = b"From: b@x.fr\r\nSubject: two\r\n\r\nbody two\r\n"


async def test_multiappend_is_all_or_nothing(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(1)])

    def run() -> None:
        raw = Raw(daemon)
        raw.login("martin")
        _, final = send(raw, "a", b"APPEND INBOX (\\Seen) " + lit(ONE) + b" " + lit(TWO))
        assert final.startswith(b"a OK [APPENDUID ") and final.split()[4] == b"1:2]", final
        # the second message names a message that does not exist: neither is added
        bad = b'CATENATE (URL "/INBOX/;uid=99")'
        _, final = send(raw, "b", b"APPEND INBOX " + lit(ONE) + b" " + bad)
        assert final.startswith(b'b NO [BADURL "/INBOX/;uid=99"]'), final
        _, final = send(raw, "c", b"STATUS INBOX (MESSAGES UIDNEXT)")
        assert raw.seen == [b'* STATUS "INBOX" (MESSAGES 2 UIDNEXT 3)'], raw.seen
        send(raw, "d", b"SELECT INBOX")
        seen, _ = send(raw, "e", b"FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert b"\\Seen" in seen[0] and b"Subject: one" in seen[1]
        assert b"Subject: two" in b"".join(seen)
        raw.close()

    await asyncio.to_thread(run)


async def test_catenate_with_rights_and_audit(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(1, body="Résultats normaux")])
    inbox = shared(SHARED).strip('"')
    drafts = shared(SHARED, "Drafts")

    def run() -> None:
        raw = Raw(daemon)
        raw.login("dupont")  # read on the box; insert only into Drafts and Sent
        url = f'"/{inbox}/;uid=1/;section=HEADER"'.encode()
        text = lit(b"Transmis par le secretariat.\r\n")
        _, final = send(
            raw,
            "a",
            b"APPEND " + drafts.encode() + b" CATENATE (URL " + url + b" TEXT " + text + b")",
        )
        assert final.startswith(b"a OK [APPENDUID"), final
        send(raw, "s", b"SELECT " + drafts.encode())
        seen, _ = send(raw, "f", b"FETCH 1 BODY.PEEK[]")
        body = b"\r\n".join(seen)
        assert (
            b"Subject: Compte rendu 1\r\n" in body
            and b"\r\n\r\nTransmis par le secretariat." in body
        )
        # a section of one part, with a partial range
        url = f'"/{inbox}/;uid=1/;section=TEXT/;partial=0.9"'.encode()
        send(
            raw,
            "b",
            b"APPEND "
            + drafts.encode()
            + b" CATENATE (TEXT "
            + lit(b"X: y\r\n\r\n")
            + b" URL "
            + url
            + b")",
        )
        seen, _ = send(raw, "g", b"FETCH 2 BODY.PEEK[TEXT]")
        assert seen[0].endswith(b"{9}") and seen[1].startswith(b"R\xc3\xa9sultat")
        # martin's own box is not in dupont's view: BADURL, as for a missing message
        for target in ("/INBOX/;uid=1", "/Partages/martin@cpts-demo.mssante.fr/INBOX/;uid=1"):
            _, final = send(
                raw, "c", b"APPEND " + drafts.encode() + f' CATENATE (URL "{target}")'.encode()
            )
            assert final.startswith(b"c NO [BADURL"), final
        # a wrong UIDVALIDITY is a bad URL too
        url = f'"/{inbox};UIDVALIDITY=1/;uid=1"'.encode()
        _, final = send(raw, "d", b"APPEND " + drafts.encode() + b" CATENATE (URL " + url + b")")
        assert final.startswith(b"d NO [BADURL"), final
        # no insert right on the shared INBOX itself
        _, final = send(
            raw, "e", b"APPEND " + shared(SHARED).encode() + b" CATENATE (TEXT " + lit(ONE) + b")"
        )
        assert final.startswith(b"e NO [NOPERM]"), final
        raw.close()

    await asyncio.to_thread(run)
    rows = await daemon.store.audit_rows(AuditFilter(person="dupont", action="imap."))
    fetches = [json.loads(r.data)["details"] for r in rows if r.action == "imap.fetch"]
    reads = [f for f in fetches if f["items"] == ["CATENATE URL"]]
    assert len(reads) == 2  # the refused URLs read nothing
    assert all(f["uids"] == [1] and f["folder"] == "INBOX" for f in reads)
    assert [r.action for r in rows].count("imap.append") == 2


async def test_binary_append_and_fetch(daemon: RunningDaemon) -> None:
    payload = b"\x00-\xe4\n\r\n\n"
    message = (
        b"From: a@x.fr\r\nMime-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: binary\r\n\r\n" + payload
    )
    qp = (
        b"From: a@x.fr\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: "
        b"quoted-printable\r\n\r\ncaf=C3=A9 =\r\nau lait  \r\n"
    )

    def run() -> None:
        raw = Raw(daemon)
        raw.login("martin")
        _, final = send(raw, "a", b"APPEND INBOX " + lit(message, binary=True))
        assert final.startswith(b"a OK"), final
        _, final = send(raw, "b", b"APPEND INBOX " + lit(qp))
        send(raw, "s", b"SELECT INBOX")
        seen, _ = send(raw, "c", b"FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1] BODY.PEEK[1])")
        line = b"\r\n".join(seen)
        assert b"BINARY.SIZE[1] 7" in line
        assert b"BINARY[1] ~{7}\r\n" + payload in line  # literal8: the content has a NUL
        assert b"BODY[1] {14}\r\nAC3kCg0KCg==\r\n" in line  # stored as base64
        seen, _ = send(raw, "d", b"FETCH 2 (BINARY.PEEK[1] BINARY.SIZE[1] BINARY.PEEK[1]<2.4>)")
        line = b"\r\n".join(seen)
        assert b"BINARY[1] {15}\r\ncaf\xc3\xa9 au lait\r\n" in line
        assert b"BINARY.SIZE[1] 15" in line and b"BINARY[1]<2> {4}\r\nf\xc3\xa9 " in line
        raw.close()

    await asyncio.to_thread(run)
