"""SEARCH and UID SEARCH (RFC 3501 §6.4.4, ESEARCH RFC 4731)."""

from __future__ import annotations

from relay.imap import commands as c
from relay.imap import response as r
from relay.imap.handlers.common import RAW_BATCH, Result, need, selected
from relay.imap.search import Candidate, matches, needs, uses_modseq
from relay.imap.session import Selected, Session
from relay.message.analysis import MessageMeta
from relay.store.mailstore import MessageRow


async def h_search(s: Session, cmd: c.Search) -> Result:
    sel = selected(s)
    need(s, sel.target, "r", "read messages")
    want = needs(cmd.criteria)
    with_modseq = uses_modseq(cmd.criteria)
    if with_modseq:
        s.enable_condstore()  # RFC 7162 §3.1: SEARCH MODSEQ enables CONDSTORE
    uids = list(sel.uids)
    rows: dict[int, MessageRow] = {}
    metas: dict[str, MessageMeta] = {}
    if want.row:
        rows, metas, _ = await s.service.mail.fetch_data(
            sel.folder.id, uids, meta=want.meta, raw=False
        )
    n = len(uids)
    found: list[tuple[int, int]] = []
    for start in range(0, n, RAW_BATCH if want.raw else max(n, 1)):
        batch = uids[start : start + (RAW_BATCH if want.raw else n)]
        raws: dict[str, bytes] = {}
        if want.raw:
            raws = await s.service.mail.raws(rows[u].blob_id for u in batch if u in rows)
        for i, uid in enumerate(batch, start=start + 1):
            row = rows.get(uid)
            if want.row and row is None:
                continue  # expunged meanwhile
            f = sel.flags[uid]
            cand = Candidate(
                seq=i,
                uid=uid,
                flags=sel.flags_of(uid),
                modseq=f.modseq,
                internal_date=row.internal_date if row else None,
                size=row.size if row else 0,
                meta=metas.get(row.blob_id) if row else None,
                raw=raws.get(row.blob_id) if row else None,
            )
            if matches(cmd.criteria, cand, messages=n, largest_uid=sel.largest_uid):
                found.append((i, uid))
    numbers = [u if cmd.uid else i for i, u in found]
    # RFC 7162 §3.1.5: with MODSEQ in the criteria, the highest mod-sequence of the
    # messages returned comes with them (none returned: no MODSEQ).
    modseq = max((sel.flags[u].modseq for _, u in found), default=0) if with_modseq else 0
    if cmd.return_options is None:
        tail = f" (MODSEQ {modseq})" if modseq else ""
        s.emit(r.untagged("SEARCH" + "".join(f" {x}" for x in numbers) + tail))
    else:
        # RFC 4731 ESEARCH
        parts = [f'(TAG "{cmd.tag}")']
        if cmd.uid:
            parts.append("UID")
        opts = cmd.return_options
        if numbers and c.SearchReturn.MIN in opts:
            parts.append(f"MIN {min(numbers)}")
        if numbers and c.SearchReturn.MAX in opts:
            parts.append(f"MAX {max(numbers)}")
        if numbers and c.SearchReturn.ALL in opts:
            parts.append("ALL " + r.sequence_set(sorted(numbers)))
        if c.SearchReturn.COUNT in opts:
            parts.append(f"COUNT {len(numbers)}")
        if modseq and opts - {c.SearchReturn.SAVE}:
            # RFC 7162 §3.1.5 / RFC 4731 §3.2: the highest MODSEQ of what is returned.
            parts.append(f"MODSEQ {_returned_modseq(found, opts, cmd.uid, sel)}")
        s.emit(r.untagged("ESEARCH " + " ".join(parts)))
    return f"{'UID ' if cmd.uid else ''}SEARCH completed", None


def _returned_modseq(
    found: list[tuple[int, int]], opts: frozenset[c.SearchReturn], uid: bool, sel: Selected
) -> int:
    """The highest MODSEQ among the messages an ESEARCH answer names: all of them with
    ALL (or COUNT), else only the MIN and MAX ones (RFC 4731 §3.2)."""
    if opts & {c.SearchReturn.ALL, c.SearchReturn.COUNT}:
        chosen = found
    else:
        key = (lambda x: x[1]) if uid else (lambda x: x[0])
        chosen = []
        if c.SearchReturn.MIN in opts:
            chosen.append(min(found, key=key))
        if c.SearchReturn.MAX in opts:
            chosen.append(max(found, key=key))
    return max(sel.flags[u].modseq for _, u in chosen)
