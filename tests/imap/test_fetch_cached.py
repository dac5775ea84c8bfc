"""FETCH answered from what the daemon holds in memory (the rows, metadata and bytes
an APPEND or another session's FETCH left behind) says exactly what a read from the
store says, on both engines; a message expunged meanwhile is not made up."""

from __future__ import annotations

import asyncio

from relay.store.rawcache import RawCache
from tests.harness import MARTIN_BOX, RunningDaemon
from tests.imap.support import Raw, deliver, letter

LETTER = (
    b"From: =?utf-8?q?Dr_Andr=C3=A9?= <andre@x.fr>\r\n"
    b"To: martin@cpts-demo.mssante.fr, <b@y.fr>\r\n"
    b"Subject: =?utf-8?q?R=C3=A9sultats?=\r\n"
    b"Message-ID: <cache-1@x.fr>\r\n"
    b"Date: Tue, 01 Dec 2026 10:00:00 +0100\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBonjour.\r\n"
    b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"JVBERi0xLjQK\r\n--b--\r\n"
)
ITEMS = "(UID RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE BODY.PEEK[] BODY.PEEK[1])"


def _forget_everything(daemon: RunningDaemon) -> None:
    mail = daemon.runtime.indexes.mail
    mail._row_cache.clear()
    mail._meta_cache.clear()
    mail.raw_cache = RawCache(mail.raw_cache.budget, mail.raw_cache.largest)


async def test_fetch_from_memory_equals_fetch_from_the_store(daemon: RunningDaemon) -> None:
    await deliver(daemon.store, MARTIN_BOX, [letter(1)])

    def run() -> None:
        writer = Raw(daemon)
        writer.login("martin")
        date = b'"01-Dec-2026 10:00:00 +0130"'
        writer.sock.sendall(
            b"a APPEND INBOX (\\Seen) %s {%d+}\r\n" % (date, len(LETTER)) + LETTER + b"\r\n"
        )
        assert writer.until(b"a ").startswith(b"a OK [APPENDUID")
        reader = Raw(daemon)
        reader.login("martin")
        reader.command("s", "SELECT INBOX")
        warm, final = reader.command("f", f"FETCH 1:* {ITEMS}")  # from what APPEND left
        assert final.startswith(b"f OK") and len(warm) >= 2
        again, _ = reader.command("g", f"FETCH 1:* {ITEMS}")  # the session's own rows
        _forget_everything(daemon)
        other = Raw(daemon)
        other.login("martin")
        other.command("s", "SELECT INBOX")
        cold, _ = other.command("f", f"FETCH 1:* {ITEMS}")  # read from the store
        assert warm == again == cold
        assert b'INTERNALDATE " 1-Dec-2026 10:00:00 +0130"' in b"".join(warm)
        assert b"JVBERi0xLjQK" in b"".join(warm)
        # expunged by another session: the reader, not told yet, gets no made-up body
        writer.command("s", "SELECT INBOX")
        writer.command("d", "STORE 2 +FLAGS.SILENT (\\Deleted)")
        writer.command("e", "EXPUNGE")
        _forget_everything(daemon)
        after, final = reader.command("h", "FETCH 2 (BODY.PEEK[])")
        assert final.startswith(b"h OK") or final.startswith(b"h NO"), final
        assert not any(b"JVBERi0xLjQK" in x for x in after if b"FETCH" in x), after
        for c in (writer, reader, other):
            c.close()

    await asyncio.to_thread(run)
