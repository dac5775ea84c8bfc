"""Issue 9 item 8 (IMAP part): a 60,000-character folder name, or one 20 levels deep, is
refused with NO [LIMIT] saying why, and nothing is created. Both engines.

Before: the name was accepted (SQLite stored it; PostgreSQL's 512-character column made
it a server error).
"""

from __future__ import annotations

import asyncio

from tests.harness import RunningDaemon
from tests.imap.support import login, ok


async def test_overlong_and_overdeep_names_are_refused(daemon: RunningDaemon) -> None:
    def run() -> tuple[tuple[str, list[bytes]], tuple[str, list[bytes]], list[bytes], str]:
        m = login(daemon, "martin")  # owner: holds the right to create folders
        m.literal = b"x" * 60_000  # type: ignore[assignment]  # sent as a literal
        long = m._simple_command("CREATE")
        deep = m.create("/".join(f"l{n}" for n in range(20)))
        listed = ok(m.list('""', "*"))
        fine = m.create("Archives/2026/Cardiologie")[0]
        m.logout()
        return long, deep, listed, fine

    (typ, long), (typ2, deep), listed, fine = await asyncio.to_thread(run)
    assert typ == "NO" and long == [b"[LIMIT] Folder name too long: 60000 bytes, at most 255"]
    assert typ2 == "NO" and deep == [b"[LIMIT] Folder too deep: 20 levels, at most 16"]
    assert not [x for x in listed if b"xxxx" in x or b"l19" in x]
    assert fine == "OK"
