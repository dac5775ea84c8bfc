"""IMAP sessions end to end with imaplib over STARTTLS and implicit TLS, both engines."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import json
from typing import Any

import pytest

from relay.store.store import AuditFilter
from tests.harness import MARTIN_BOX, PASSWORDS, SHARED, RunningDaemon
from tests.imap.support import (
    Raw,
    answer,
    connect_starttls,
    connect_tls,
    deliver,
    letter,
    login,
    ok,
    shared,
)

INBOX = shared(SHARED)


async def test_starttls_refuses_login_before_tls_then_serves(daemon: RunningDaemon) -> None:
    def run() -> None:
        raw = Raw(daemon, implicit=False)
        assert b"STARTTLS" in raw.greeting and b"LOGINDISABLED" in raw.greeting
        assert b"AUTH=PLAIN" not in raw.greeting
        _, final = raw.command("a", f'LOGIN martin "{PASSWORDS["martin"]}"')
        assert final.startswith(b"a NO [PRIVACYREQUIRED]")
        _, final = raw.command("b", "AUTHENTICATE PLAIN")
        assert final.startswith(b"b NO [PRIVACYREQUIRED]")
        raw.starttls()
        untagged, final = raw.command("c", "CAPABILITY")
        assert b"AUTH=PLAIN" in untagged[0] and b"STARTTLS" not in untagged[0]
        raw.login("martin")
        raw.close()

        m = connect_starttls(daemon)
        m.login("martin", PASSWORDS["martin"])
        assert "STARTTLS" not in m.capabilities
        ok(m.select())
        m.logout()

    await asyncio.to_thread(run)


async def test_shared_box_read_flow_over_implicit_tls(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(i) for i in range(1, 4)])

    def run() -> None:
        m = login(daemon, "martin")
        for cap in ("IDLE", "NAMESPACE", "UIDPLUS", "MOVE", "ACL", "RIGHTS=KXTE", "CONDSTORE"):
            assert cap in m.capabilities
        assert any(c.startswith("APPENDLIMIT=") for c in m.capabilities)
        typ, _ = m._simple_command("NAMESPACE")
        assert m.untagged_responses["NAMESPACE"] == [b'(("" "/")) (("Partages/" "/")) NIL']
        listed = ok(m.list())
        assert b'(\\HasNoChildren) "/" "Partages/secretariat@cpts-demo.mssante.fr/INBOX"' in listed
        assert b'(\\Noselect \\HasChildren) "/" "Partages"' in listed
        assert b'(\\HasNoChildren) "/" "INBOX"' in listed  # martin's own PER box
        assert ok(m.select(INBOX)) == [b"3"]
        assert m.untagged_responses["UIDVALIDITY"]
        assert m.response("UIDNEXT") == ("UIDNEXT", [b"4"])

        data = ok(m.fetch("1:*", "(UID FLAGS RFC822.SIZE ENVELOPE)"))
        # martin is the first to select: the three messages are \Recent for him.
        assert len(data) == 3 and b"UID 1 FLAGS (\\Recent) RFC822.SIZE" in data[0]
        assert b'"Compte rendu 1"' in data[0]
        # BODY.PEEK and partials do not set \Seen; BODY[] does (RFC 3501 §6.4.5)
        peek = ok(m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
        assert peek[0].endswith(b"Subject: Compte rendu 1\r\n\r\n")
        part = ok(m.uid("FETCH", "2", "(BODY.PEEK[TEXT]<0.7>)"))
        assert part[0].endswith(b"BODY[TEXT]<0> {7}Bonjour")
        assert ok(m.search(None, "UNSEEN")) == [b"1 2 3"]
        full = ok(m.fetch("3", "(BODY[])"))
        assert b"Message-ID: <m3@cabinet.example>" in full[0]
        assert ok(m.fetch("3", "(FLAGS)")) == [b"3 (FLAGS (\\Recent \\Seen))"]
        assert ok(m.search(None, "UNSEEN")) == [b"1 2"]
        assert ok(m.search("UTF-8", "SUBJECT", '"rendu 2"')) == [b"2"]
        assert ok(m.search(None, "BODY", "Message 3")) == [b"3"]
        assert ok(m.uid("SEARCH", "OR", "UID", "1", "SEEN")) == [b"1 3"]
        assert ok(m.search(None, "NOT", "LARGER", "1")) == [b""]
        assert ok(m.search(None, "SENTON", "2-Mar-2026")) == [b"1 2 3"]

        # STORE, COPY (COPYUID), MOVE, EXPUNGE
        assert ok(m.store("1", "+FLAGS", "(\\Flagged $Urgent)")) == [
            b"1 (FLAGS (\\Recent $Urgent \\Flagged))"
        ]
        typ, data = m.uid("COPY", "1:2", shared(SHARED, "Trash"))
        assert typ == "OK"
        typ, data = m._simple_command("UID", "MOVE", "2", shared(SHARED, "Drafts"))
        assert typ == "OK"
        assert m.untagged_responses.get("EXPUNGE") == [b"2"]
        assert ok(m.status(shared(SHARED, "Trash"), "(MESSAGES UNSEEN UIDNEXT)")) == [
            b'"Partages/secretariat@cpts-demo.mssante.fr/Trash" (MESSAGES 2 UNSEEN 2 UIDNEXT 3)'
        ]
        ok(m.store("1", "+FLAGS", "(\\Deleted)"))
        ok(m.expunge())
        assert ok(m.search(None, "ALL")) == [b"1"]
        assert ok(m.fetch("1", "(UID)")) == [b"1 (UID 3)"]
        ok(m.close())
        m.logout()

    await asyncio.to_thread(run)
    rows = await daemon.store.audit_rows(AuditFilter(box=SHARED, action="imap."))
    actions = [r.action for r in rows]
    assert actions.count("imap.select") == 1
    assert "imap.copy" in actions and "imap.expunge" in actions and "imap.store" in actions
    assert all(r.person == "martin" for r in rows)
    fetches = [json.loads(r.data)["details"] for r in rows if r.action == "imap.fetch"]
    # headers, a partial text and the full body were read: three traces, ids not content
    assert [f["uids"] for f in fetches] == [[1], [2], [3]]
    assert fetches[2]["message_ids"] == ["m3@cabinet.example"]
    assert "Bonjour" not in "".join(r.data for r in rows)


async def test_copyuid_appenduid_and_own_box_not_traced(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, MARTIN_BOX, [letter(1)])

    def run() -> None:
        m = login(daemon, "martin")
        typ, data = m.append("INBOX", "(\\Seen)", None, letter(2))
        assert typ == "OK" and data[0] is not None
        assert data[0].startswith(b"[APPENDUID ") and data[0].split()[2] == b"2]"
        ok(m.select("INBOX"))
        typ, data = m.uid("COPY", "1:2", "Trash")
        assert typ == "OK"
        copyuid = m.untagged_responses
        del copyuid
        ok(m.fetch("1:2", "(BODY[])"))
        assert ok(m.search(None, "SEEN")) == [b"1 2"]
        m.logout()

    await asyncio.to_thread(run)
    # martin's own PER box: logins are audited, reading his own mail is not
    assert await daemon.store.audit_rows(AuditFilter(box=MARTIN_BOX, action="imap.")) == []


async def test_per_person_seen_on_the_shared_box(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(1), letter(2)])

    def run() -> None:
        m = login(daemon, "martin")
        ok(m.select(INBOX))
        ok(m.fetch("1", "(RFC822)"))
        assert ok(m.search(None, "SEEN")) == [b"1"]
        d = login(daemon, "dupont")
        ok(d.select(INBOX))
        assert ok(d.search(None, "SEEN")) == [b""]  # martin's reading is his own
        ok(d.store("2", "+FLAGS", "(\\Seen)"))
        assert ok(m.search(None, "SEEN")) == [b"1"]
        assert ok(d.status(INBOX, "(UNSEEN)")) == [
            b'"Partages/secretariat@cpts-demo.mssante.fr/INBOX" (UNSEEN 1)'
        ]
        m.logout()
        d.logout()

    await asyncio.to_thread(run)


async def test_delegation_by_authzid_and_star_login(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, SHARED, [letter(1)])

    def run() -> None:
        m = connect_tls(daemon)
        blob = f"{SHARED}\0dupont\0{PASSWORDS['dupont']}".encode()
        typ, _ = m.authenticate("PLAIN", lambda _: blob)
        assert typ == "OK"
        assert ok(m.select("INBOX")) == [b"1"]  # the shared box is the personal namespace
        typ, _ = m._simple_command("NAMESPACE")
        assert m.untagged_responses["NAMESPACE"] == [b'(("" "/")) NIL NIL']
        m.logout()

        s = login(daemon, "dupont", as_login=f"dupont*{SHARED}")
        assert ok(s.select("INBOX")) == [b"1"]
        ok(s.fetch("1", "(BODY.PEEK[])"))
        s.logout()

        # a box one does not co-hold cannot be authorised as
        x = connect_tls(daemon)
        with pytest.raises(imaplib.IMAP4.error, match="AUTHORIZATIONFAILED"):
            x.login(f"dupont*{MARTIN_BOX}", PASSWORDS["dupont"])
        x.logout()

    await asyncio.to_thread(run)
    [fetch] = await daemon.store.audit_rows(AuditFilter(action="imap.fetch"))
    assert fetch.person == "dupont" and fetch.box == SHARED
    logins = await daemon.store.audit_rows(AuditFilter(action="auth.succeeded"))
    assert [(r.person, r.box) for r in logins] == [("dupont", SHARED), ("dupont", SHARED)]


async def test_external_with_client_certificate(daemon: RunningDaemon) -> None:
    def run() -> None:
        m = connect_tls(daemon, cert="person-martin")
        typ, _ = m.authenticate("EXTERNAL", lambda _: b"")
        assert typ == "OK"
        ok(m.select(INBOX))
        m.logout()
        n = connect_tls(daemon)
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            n.authenticate("EXTERNAL", lambda _: b"")
        n.logout()

    await asyncio.to_thread(run)
    [ok_row] = await daemon.store.audit_rows(AuditFilter(action="auth.succeeded"))
    assert ok_row.person == "martin" and json.loads(ok_row.data)["details"]["mechanism"] == (
        "EXTERNAL"
    )


async def test_failed_login_is_slowed_and_audited(daemon: RunningDaemon) -> None:
    def run() -> None:
        m = connect_tls(daemon)
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            m.login("martin", "wrong")
        plain = base64.b64encode(b"\0martin\0wrong").decode()
        typ, _ = m._simple_command("AUTHENTICATE", "PLAIN", plain)
        assert typ == "NO"
        m.logout()

    await asyncio.to_thread(run)
    rows = await daemon.store.audit_rows(AuditFilter(action="auth.failed"))
    assert len(rows) == 2 and all(json.loads(r.data)["details"]["login"] == "martin" for r in rows)


async def test_folder_management_and_subscriptions(daemon: RunningDaemon) -> None:
    def run() -> None:
        m = login(daemon, "martin")
        ok(m.create(shared(SHARED, "Dossiers")))
        ok(m.create(shared(SHARED, "Dossiers/2026")))
        typ, first = answer(m.create(shared(SHARED, "Dossiers")))
        assert typ == "NO" and b"ALREADYEXISTS" in first
        ok(m.rename(shared(SHARED, "Dossiers"), shared(SHARED, "Archives")))
        listed = ok(m.list('""', "Partages/%/Archives*"))
        assert listed == [
            b'(\\HasChildren) "/" "Partages/secretariat@cpts-demo.mssante.fr/Archives"',
            b'(\\HasNoChildren) "/" "Partages/secretariat@cpts-demo.mssante.fr/Archives/2026"',
        ]
        ok(m.subscribe(shared(SHARED, "Archives/2026")))
        assert ok(m.lsub()) == [b'() "/" "Partages/secretariat@cpts-demo.mssante.fr/Archives/2026"']
        ok(m.delete(shared(SHARED, "Archives/2026")))
        typ, _ = m.delete(INBOX)
        assert typ == "NO"
        # dupont has no "manage" right on the shared box
        d = login(daemon, "dupont")
        typ, first = answer(d.create(shared(SHARED, "Perso")))
        assert typ == "NO" and b"[NOPERM]" in first
        m.logout()
        d.logout()

    await asyncio.to_thread(run)
    ops = [
        json.loads(r.data)["details"]["operation"]
        for r in await daemon.store.audit_rows(AuditFilter(action="imap.folder"))
    ]
    assert ops == ["create", "create", "rename", "delete"]


def literals(result: tuple[str, list[Any]]) -> list[bytes]:
    """The literals of an imaplib OK answer, as they came."""
    typ, data = result
    assert typ == "OK", (typ, data)
    return [x[1] for x in data if isinstance(x, tuple)]


async def test_a_big_submitted_message_is_fetched_byte_for_byte(daemon: RunningDaemon) -> None:
    """A message above LARGE_BLOB_BYTES goes in over SMTP (SQLite: written into its row
    in pieces; PostgreSQL: by COPY) and BODY[] gives back what was stored, the sent
    body intact, also across the writer's 1 MiB chunk boundaries."""
    from relay.store.fastsql import BLOB_CHUNK_BYTES, LARGE_BLOB_BYTES
    from tests.smtp.test_submission import letter as sent_letter
    from tests.smtp.test_submission import submit

    line = b"Ligne %07d du compte rendu, assez longue pour remplir la page.\r\n"
    body = b"".join(line % i for i in range(3 * LARGE_BLOB_BYTES // len(line)))
    data = sent_letter(f"Dr Martin <{MARTIN_BOX}>", SHARED, "big") + body
    code, msg = await asyncio.to_thread(
        submit, daemon, "martin", PASSWORDS["martin"], MARTIN_BOX, [SHARED], data
    )
    assert code == 250, msg
    [stored] = await daemon.store.messages(SHARED)
    assert stored.raw.endswith(b"\r\n\r\n" + data.partition(b"\r\n\r\n")[2])

    def run() -> None:
        m = login(daemon, "martin")
        ok(m.select(INBOX))
        assert literals(m.fetch("1", "(BODY.PEEK[])")) == [stored.raw]
        at = BLOB_CHUNK_BYTES - 1000  # a piece across the first chunk boundary
        piece = literals(m.fetch("1", f"(BODY.PEEK[]<{at}.2000>)"))
        assert piece == [stored.raw[at : at + 2000]]
        m.logout()

    await asyncio.to_thread(run)
