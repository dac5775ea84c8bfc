"""SEARCH and UID SEARCH (RFC 3501 §6.4.4; ESEARCH RFC 4731; SEARCHRES RFC 5182;
CONTEXT=SEARCH, PARTIAL and UPDATE RFC 5267 §4).

`matching` evaluates criteria over the selected folder (or some of its messages); SORT,
THREAD and the live search contexts use it too. `answer` sends a result the way the
command's RETURN options ask, saves it for ``$`` and registers a live context.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

from relay.imap import commands as c
from relay.imap import response as r
from relay.imap import rev2
from relay.imap.context import MAX_CONTEXTS, SearchContext, esearch, resolve_saved, to_save
from relay.imap.flags import RECENT
from relay.imap.handlers.common import ClientBug, ImapError, Result, need, selected
from relay.imap.search import Candidate, flag_predicate, matches, needs, uses_modseq
from relay.imap.session import Selected, Session
from relay.message.analysis import MessageMeta
from relay.store.mailstore import MessageRow


class NoUpdate(ImapError):
    """RFC 5267 §4.2: the server will not keep this search live (``[NOUPDATE "tag"]``)."""

    imap_code = "NOUPDATE"

    def __init__(self, text: str, tag: str) -> None:
        super().__init__(text)
        self.imap_argument = r.quoted(tag).decode()


async def matching(
    s: Session, sel: Selected, criteria: c.SearchKey, uids: Sequence[int] | None = None
) -> list[tuple[int, int]]:
    """(message number, UID) of the messages matching `criteria`, ascending; only
    among `uids` when given. ``$`` is the saved result (RFC 5182 §2.1)."""
    criteria = resolve_saved(criteria, sel.saved)
    want = needs(criteria)
    if uids is None and (test := flag_predicate(criteria)) is not None:
        hits = _by_flags(sel, criteria, test)
        if len(hits) == len(sel.uids):
            return list(enumerate(sel.uids, 1))
        return list(zip(sel.seqs_of(hits, ascending=True), hits, strict=True))
    candidates = list(sel.uids if uids is None else uids)
    total = len(sel.uids)
    rows: dict[int, MessageRow] = {}
    metas: dict[str, MessageMeta] = {}
    if want.row and candidates:
        rows, metas, _ = await s.service.mail.fetch_data(
            sel.folder.id, candidates, meta=want.meta, raw=False
        )
    found: list[tuple[int, int]] = []
    for batch in _batches(candidates, rows, want.raw):
        raws: dict[str, bytes] = {}
        if want.raw:
            ids = [rows[u].blob_id for u in batch if u in rows]
            raws = await s.service.mail.raws(ids, per_query=len(ids))
        for uid in batch:
            f = sel.flags.get(uid)
            row = rows.get(uid)
            if f is None or (want.row and row is None):
                continue  # expunged meanwhile
            seq = sel.seq_of(uid)
            cand = Candidate(
                seq=seq,
                uid=uid,
                flags=sel.flags_of(uid),
                modseq=f.modseq,
                internal_date=row.internal_date if row else None,
                size=row.size if row else 0,
                meta=metas.get(row.blob_id) if row else None,
                raw=raws.get(row.blob_id) if row else None,
            )
            if matches(criteria, cand, messages=total, largest_uid=sel.largest_uid):
                found.append((seq, uid))
    return found


def _by_flags(
    sel: Selected, criteria: c.SearchKey, test: Callable[[frozenset[str]], bool]
) -> list[int]:
    """The UIDs (ascending) matching criteria on flags alone: each distinct flag set
    is tested once, not each message."""
    if rev2.uses_recent(criteria) and sel.show_recent and sel.recent:
        # \Recent is the session's, not in the stored sets: per message, memoised.
        memo: dict[tuple[frozenset[str], bool], bool] = {}
        found = []
        for u in sel.uids:
            fs, rec = sel.flags[u].flags, u in sel.recent
            hit = memo.get((fs, rec))
            if hit is None:
                hit = memo[(fs, rec)] = test(fs | {RECENT} if rec else fs)
            if hit:
                found.append(u)
        return found
    chosen = [uids for fs, uids in sel.flag_sets().items() if uids and test(fs)]
    if not chosen:
        return []
    return sorted(chosen[0] if len(chosen) == 1 else set().union(*chosen))


async def matching_uids(s: Session, sel: Selected, criteria: c.SearchKey) -> list[int]:
    """The UIDs matching `criteria`, ascending (SEARCH: no message number needed)."""
    if (test := flag_predicate(resolve_saved(criteria, sel.saved))) is not None:
        return _by_flags(sel, criteria, test)
    return [u for _, u in await matching(s, sel, criteria)]


# Message bytes decrypted at once by a body search: bounded in count and in octets,
# so 10,000 small letters take 20 reads and one 25 MB attachment is read alone.
RAW_BATCH_MESSAGES = 500
RAW_BATCH_BYTES = 8 * 1024 * 1024


def _batches(uids: list[int], rows: dict[int, MessageRow], raw: bool) -> Iterator[list[int]]:
    if not raw:
        if uids:
            yield uids
        return
    batch: list[int] = []
    size = 0
    for uid in uids:
        row = rows.get(uid)
        weight = row.size if row is not None else 0
        if batch and (len(batch) >= RAW_BATCH_MESSAGES or size + weight > RAW_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(uid)
        size += weight
    if batch:
        yield batch


def answer(
    s: Session,
    sel: Selected,
    cmd: c.Search | c.Sort,
    uids: list[int],
    *,
    legacy: str,
    sort: tuple[c.SortCriterion, ...] | None,
    criteria: c.SearchKey,
) -> None:
    """Send the result (UIDs in result order) as ``* SEARCH``/``* SORT`` (`legacy`)
    or ``* ESEARCH``; save it for ``$``; keep it live for ``RETURN (UPDATE)``."""
    numbers = uids if cmd.uid else sel.seqs_of(uids, ascending=sort is None)
    opts = cmd.return_options
    # RFC 7162 §3.1.5: with MODSEQ in the criteria, the highest mod-sequence of the
    # messages returned comes with them (none returned: no MODSEQ).
    with_modseq = uses_modseq(criteria) and bool(uids)
    if opts is None:
        tail = f" (MODSEQ {max(sel.flags[u].modseq for u in uids)})" if with_modseq else ""
        listed = (" " + r.spaced(numbers)) if numbers else ""
        s.emit(r.untagged(legacy + listed + tail))
        return
    if c.SearchReturn.SAVE in opts:
        # RFC 5182 §2.4: the UIDs are kept, so "$" survives expunges of other messages.
        sel.saved = to_save(sorted(uids), opts)
    if opts != {c.SearchReturn.SAVE}:  # RFC 5182 §2.1: SAVE alone returns nothing
        ordered = sort is not None
        data = esearch(cmd.tag, cmd.uid, numbers, opts, cmd.partial, sorted_result=ordered)
        if with_modseq:
            # RFC 7162 §3.1.5 / RFC 4731 §3.2: the highest MODSEQ of what is returned.
            data += f" MODSEQ {_returned_modseq(uids, opts, sel, sorted_result=ordered)}"
        s.emit(r.untagged(data))
    if c.SearchReturn.UPDATE in opts:
        sel.contexts = [x for x in sel.contexts if x.tag != cmd.tag]
        shown = opts - {c.SearchReturn.UPDATE, c.SearchReturn.CONTEXT, c.SearchReturn.SAVE}
        sel.contexts.append(
            SearchContext(
                tag=cmd.tag,
                uid=cmd.uid,
                criteria=criteria,
                sort=sort,
                options=frozenset(shown),
                result=list(uids),
                seen={u: sel.flags[u].modseq for u in sel.uids},
            )
        )


def _returned_modseq(
    uids: list[int], opts: frozenset[c.SearchReturn], sel: Selected, *, sorted_result: bool
) -> int:
    """The highest MODSEQ among the messages an ESEARCH answer names: all of them with
    ALL (or COUNT), else only the MIN and MAX ones (RFC 4731 §3.2)."""
    chosen = uids
    if not opts & {c.SearchReturn.ALL, c.SearchReturn.COUNT}:
        first, last = (uids[0], uids[-1]) if sorted_result else (min(uids), max(uids))
        picked = [first] if c.SearchReturn.MIN in opts else []
        if c.SearchReturn.MAX in opts:
            picked.append(last)
        chosen = picked or uids
    return max(sel.flags[u].modseq for u in chosen)


def check_update(sel: Selected, cmd: c.Search | c.Sort) -> None:
    """RFC 5267 §4.2: refuse a new live context beyond the limit, before any work."""
    opts = cmd.return_options or frozenset()
    if c.SearchReturn.UPDATE in opts:
        if c.SearchReturn.SAVE in opts:
            # RFC 5267 §4.1 leaves UPDATE with SAVE undefined; the saved result would
            # drift from the updates.
            raise NoUpdate("UPDATE cannot be combined with SAVE", cmd.tag)
        if len([x for x in sel.contexts if x.tag != cmd.tag]) >= MAX_CONTEXTS:
            raise NoUpdate("Too many live searches", cmd.tag)


async def h_search(s: Session, cmd: c.Search) -> Result:
    sel = selected(s)
    need(s, sel.target, "r", "read messages")
    if s.rev2:
        if rev2.uses_recent(cmd.criteria):
            # RFC 9051 §9 search-key has no RECENT, NEW or OLD (Appendix E item 12).
            raise ClientBug("RECENT, NEW and OLD are not part of IMAP4rev2 (RFC 9051)")
        if cmd.return_options is None:
            # RFC 9051 §6.4.4: the answer is ESEARCH; no RETURN is RETURN (ALL).
            cmd = dataclasses.replace(cmd, return_options=frozenset({c.SearchReturn.ALL}))
    check_update(sel, cmd)
    criteria = resolve_saved(cmd.criteria, sel.saved)
    if uses_modseq(criteria):
        s.enable_condstore()  # RFC 7162 §3.1: SEARCH MODSEQ enables CONDSTORE
    if cmd.return_options is not None and c.SearchReturn.SAVE in cmd.return_options:
        sel.saved = []  # RFC 5182 §2.1: a failed SEARCH ... SAVE leaves "$" empty
    found = await matching_uids(s, sel, criteria)
    answer(s, sel, cmd, found, legacy="SEARCH", sort=None, criteria=criteria)
    return f"{'UID ' if cmd.uid else ''}SEARCH completed", None


async def h_cancelupdate(s: Session, cmd: c.CancelUpdate) -> Result:
    """RFC 5267 §4.3: the named live searches send no more updates."""
    sel = selected(s)
    sel.contexts = [x for x in sel.contexts if x.tag not in cmd.tags]
    return "CANCELUPDATE completed", None
