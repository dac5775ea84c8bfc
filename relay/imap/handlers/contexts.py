"""Live search contexts (RFC 5267 §4.1 UPDATE): after the selected folder changed,
re-evaluate each context on the messages that changed and send ADDTO / REMOVEFROM.

Called by the session at the end of every refresh (before each tagged reply, and at
once while IDLE). Only messages whose MODSEQ moved, and new ones, are evaluated again;
removals by expunge were already sent before their EXPUNGE (`SearchContext.drop`).
"""

from __future__ import annotations

from relay.imap import response as r
from relay.imap.handlers.search import matching
from relay.imap.handlers.sort import sorted_uids
from relay.imap.session import Selected, Session


async def update_contexts(s: Session, sel: Selected) -> None:
    for ctx in list(sel.contexts):
        changed = [u for u in sel.uids if ctx.seen.get(u) != sel.flags[u].modseq]
        if not changed and not ctx.stale:
            continue
        for u in changed:
            ctx.seen[u] = sel.flags[u].modseq
        hits = {u for _, u in await matching(s, sel, ctx.criteria, changed)}
        touched = set(changed)
        members = {u for u in ctx.result if u in sel.flags and u not in touched} | hits
        ordered = sorted(members)
        if ctx.sort is not None:
            ordered = await sorted_uids(s, sel, ctx.sort, ordered)
        update = ctx.update(ordered, (lambda u: u) if ctx.uid else sel.seq_of)
        if update is not None:
            s.emit(r.untagged(update))
