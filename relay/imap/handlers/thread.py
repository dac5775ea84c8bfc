"""THREAD and UID THREAD (RFC 5256 §3): ORDEREDSUBJECT and REFERENCES."""

from __future__ import annotations

from relay.imap import commands as c
from relay.imap import response as r
from relay.imap import thread as threading
from relay.imap.handlers.common import Result, need, selected
from relay.imap.handlers.search import matching
from relay.imap.handlers.sort import message_keys
from relay.imap.session import Session

_ALGORITHMS = {
    c.ThreadAlgorithm.ORDEREDSUBJECT: threading.ordered_subject,
    c.ThreadAlgorithm.REFERENCES: threading.references,
}


async def h_thread(s: Session, cmd: c.Thread) -> Result:
    sel = selected(s)
    need(s, sel.target, "r", "read messages")
    found = await matching(s, sel, cmd.search)
    keys = await message_keys(s, sel, [u for _, u in found])
    messages = [(u if cmd.uid else seq, keys[u]) for seq, u in found if u in keys]
    roots = _ALGORITHMS[cmd.algorithm](messages)
    s.emit(r.untagged("THREAD " + threading.render(roots) if roots else "THREAD"))
    return f"{'UID ' if cmd.uid else ''}THREAD completed", None
