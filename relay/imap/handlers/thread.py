"""THREAD and UID THREAD (RFC 5256 §3): ORDEREDSUBJECT and REFERENCES."""

from __future__ import annotations

from relay.imap import commands as c
from relay.imap import response as r
from relay.imap import thread as threading
from relay.imap.handlers.common import Result, need, selected
from relay.imap.handlers.search import matching
from relay.imap.handlers.sort import message_keys, remember
from relay.imap.session import Session

_ALGORITHMS = {
    c.ThreadAlgorithm.ORDEREDSUBJECT: threading.ordered_subject,
    c.ThreadAlgorithm.REFERENCES: threading.references,
}


async def h_thread(s: Session, cmd: c.Thread) -> Result:
    sel = selected(s)
    need(s, sel.target, "r", "read messages")
    found = await matching(s, sel, cmd.search)
    # The threads depend only on the messages (and their numbers): an identical
    # request on an unchanged folder is answered from the selection's memo.
    memo_key = (cmd.algorithm, cmd.uid, tuple(found))
    text = sel.thread_memo.get(memo_key)
    if text is None:
        keys = await message_keys(s, sel, [u for _, u in found])
        messages = [(u if cmd.uid else seq, keys[u]) for seq, u in found if u in keys]
        text = remember(
            sel.thread_memo, memo_key, threading.render(_ALGORITHMS[cmd.algorithm](messages))
        )
    s.emit(r.untagged("THREAD " + text if text else "THREAD"))
    return f"{'UID ' if cmd.uid else ''}THREAD completed", None
