"""SEARCH and UID SEARCH (RFC 3501 §6.4.4, ESEARCH RFC 4731)."""

from __future__ import annotations

from relay.imap import commands as c
from relay.imap import response as r
from relay.imap.handlers.common import RAW_BATCH, Result, need, selected
from relay.imap.search import Candidate, matches, needs
from relay.imap.session import Session
from relay.message.analysis import MessageMeta
from relay.store.mailstore import MessageRow


async def h_search(s: Session, cmd: c.Search) -> Result:
    sel = selected(s)
    need(s, sel.target, "r", "read messages")
    want = needs(cmd.criteria)
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
                flags=f.flags,
                modseq=f.modseq,
                internal_date=row.internal_date if row else None,
                size=row.size if row else 0,
                meta=metas.get(row.blob_id) if row else None,
                raw=raws.get(row.blob_id) if row else None,
            )
            if matches(cmd.criteria, cand, messages=n, largest_uid=sel.largest_uid):
                found.append((i, uid))
    numbers = [u if cmd.uid else i for i, u in found]
    if cmd.return_options is None:
        s.emit(r.untagged("SEARCH" + "".join(f" {x}" for x in numbers)))
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
        s.emit(r.untagged("ESEARCH " + " ".join(parts)))
    return f"{'UID ' if cmd.uid else ''}SEARCH completed", None
