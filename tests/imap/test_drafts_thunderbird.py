"""Issue 9 item 11: a co-holder with `send` saves drafts in the shared box's Drafts the
way Thunderbird does on each auto-save: APPEND the new version, then UID STORE
+FLAGS (\\Deleted) and UID EXPUNGE on the previous one. Both engines.

Before: `send` gave only `i p` on Drafts, so the UID EXPUNGE got NO [NOPERM], an alert
on every save, and every version stayed.
"""

from __future__ import annotations

import asyncio
import json
import re

from relay.store.store import AuditFilter
from tests.harness import SHARED, RunningDaemon
from tests.imap.support import answer, letter, login, ok, shared

DRAFTS = shared(SHARED, "Drafts")


def appenduid(data: list[bytes]) -> int:
    match = re.search(rb"\[APPENDUID \d+ (\d+)\]", b" ".join(data))
    assert match, data
    return int(match.group(1))


async def test_thunderbird_draft_autosave_replaces_the_previous_version(
    daemon: RunningDaemon,
) -> None:
    def run() -> tuple[list[bytes], list[bytes], str, str]:
        m = login(daemon, "dupont")  # read, flag, send
        first = appenduid(ok(m.append(DRAFTS, "(\\Draft \\Seen)", None, letter(1))))
        ok(m.select(DRAFTS))
        for n in (2, 3):  # two auto-saves
            new = appenduid(ok(m.append(DRAFTS, "(\\Draft \\Seen)", None, letter(n))))
            ok(m.uid("STORE", str(first), "+FLAGS.SILENT", "(\\Deleted)"))
            ok(m.uid("EXPUNGE", str(first)))
            first = new
        left = ok(m.uid("SEARCH", "ALL"))
        rights = ok(m.myrights(DRAFTS))
        # ... and nowhere else: INBOX and Sent keep their rights
        ok(m.select(shared(SHARED)))
        inbox = answer(m.uid("STORE", "1:*", "+FLAGS", "(\\Deleted)"))[0]
        sent = ok(m.myrights(shared(SHARED, "Sent")))[0].decode()
        m.logout()
        return left, rights, inbox, sent

    left, rights, inbox, sent = await asyncio.to_thread(run)
    assert left == [b"3"]  # only the newest version stays
    assert rights == [
        b'"Partages/secretariat@cpts-demo.mssante.fr/Drafts" lrswipted'
    ]  # d: RFC 2086 (t e)
    assert inbox == "NO"
    assert sent.endswith(" lrswip")
    expunged = await daemon.store.audit_rows(AuditFilter(action="imap.expunge"))
    assert [(r.person, r.box, json.loads(r.data)["details"]["uids"]) for r in expunged] == [
        ("dupont", SHARED, [1]),
        ("dupont", SHARED, [2]),
    ]
    # the one refusal is the INBOX check above, not a Drafts save
    [refused] = await daemon.store.audit_rows(AuditFilter(action="imap.refused"))
    assert json.loads(refused.data)["details"]["folder"] == "INBOX"


async def test_read_only_replacement_still_cannot_touch_drafts(daemon: RunningDaemon) -> None:
    def run() -> tuple[str, list[bytes]]:
        m = login(daemon, "leroy")  # read only: no send, so nothing more on Drafts
        status = answer(m.append(DRAFTS, None, None, letter(1)))[0]
        rights = ok(m.myrights(DRAFTS))
        m.logout()
        return status, rights

    status, rights = await asyncio.to_thread(run)
    assert status == "NO"
    assert rights == [b'"Partages/secretariat@cpts-demo.mssante.fr/Drafts" lrs']
