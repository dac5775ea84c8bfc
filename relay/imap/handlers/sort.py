"""SORT and UID SORT (RFC 5256 §3), ESORT and CONTEXT=SORT (RFC 5267 §3, §4).

Sort keys come from the metadata computed at acceptance, through the service's key
cache (`relay.imap.sort.KeyCache`, by blob): a second SORT of a folder reads only its
message rows (one query) and whatever its search criteria need.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from relay.imap import commands as c
from relay.imap.handlers.common import Result, need, selected
from relay.imap.handlers.search import answer, check_update, matching
from relay.imap.session import Selected, Session
from relay.imap.sort import MessageKeys, sort_messages
from relay.store.mailstore import MessageRow

_V = TypeVar("_V")


async def message_keys(s: Session, sel: Selected, uids: Sequence[int]) -> dict[int, MessageKeys]:
    """The sort and thread keys of the given messages (those still there): the rows
    not yet read in this selection in one query, the keys from the service's cache,
    headers read (without the body tree) only for messages never sorted before."""
    if not uids:
        return {}
    cache = s.service.sort_keys
    unknown = [u for u in uids if u not in sel.rows]
    if unknown:
        read, _, _ = await s.service.mail.fetch_data(sel.folder.id, unknown, meta=False, raw=False)
        sel.rows.update(read)
    rows = {u: row for u in uids if (row := sel.rows.get(u)) is not None}
    out: dict[int, MessageKeys] = {}
    missing: list[MessageRow] = []
    for uid, row in rows.items():
        keys = cache.get(row.blob_id)
        if keys is None:
            missing.append(row)
        else:
            out[uid] = keys
    if missing:
        headers = await s.service.mail.headers(row.blob_id for row in missing)
        for row in missing:
            found = headers.get(row.blob_id)
            if found is not None:
                out[row.uid] = keys = MessageKeys(*found, row.internal_date, row.size)
                cache.put(row.blob_id, keys)
    return out


MEMO_ENTRIES = 4  # results kept per selection, per command kind


def remember(memo: dict[tuple[object, ...], _V], key: tuple[object, ...], value: _V) -> _V:
    """Keep `value` under `key`, dropping the oldest entries past MEMO_ENTRIES."""
    while len(memo) >= MEMO_ENTRIES:
        memo.pop(next(iter(memo)))
    memo[key] = value
    return value


async def sorted_uids(
    s: Session, sel: Selected, criteria: Sequence[c.SortCriterion], uids: Sequence[int]
) -> list[int]:
    """`uids` (ascending) in SORT order. The order depends only on the messages and
    their keys, which never change for a UID: an identical request is answered from
    the selection's memo."""
    key = (tuple(criteria), tuple(uids))
    known = sel.sort_memo.get(key)
    if known is not None:
        return list(known)
    keys = await message_keys(s, sel, uids)
    order: list[int] = sort_messages([(u, keys[u]) for u in uids if u in keys], criteria)
    remember(sel.sort_memo, key, order)
    return list(order)


async def h_sort(s: Session, cmd: c.Sort) -> Result:
    sel = selected(s)
    need(s, sel.target, "r", "read messages")
    check_update(sel, cmd)
    found = await matching(s, sel, cmd.search)
    order = await sorted_uids(s, sel, cmd.criteria, [u for _, u in found])
    answer(s, sel, cmd, order, legacy="SORT", sort=cmd.criteria, criteria=cmd.search)
    return f"{'UID ' if cmd.uid else ''}SORT completed", None
