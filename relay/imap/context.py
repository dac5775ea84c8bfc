"""Search contexts and result shaping (RFC 5267 CONTEXT=SEARCH / CONTEXT=SORT, RFC 4731
ESEARCH, RFC 5182 SEARCHRES), pure.

`esearch` shapes a result as ``* ESEARCH`` data (MIN, MAX, ALL, COUNT, PARTIAL); for a
sorted result (ESORT, RFC 5267 §3) MIN and MAX are the first and last in sort order
and ALL keeps the sort order. A `SearchContext` is a ``RETURN (UPDATE ...)`` search
kept live (RFC 5267 §4.1): the session re-evaluates it when the mailbox changes and
`SearchContext.update` gives the ``ADDTO`` / ``REMOVEFROM`` (or new MIN/MAX/COUNT)
to send, and `SearchContext.drop` the ``REMOVEFROM`` to send just before an
``EXPUNGE`` (RFC 5267 §4.3: the removed number is the one before the expunge).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from relay.imap import commands as c

# RFC 5267 §4.2 lets a server refuse more contexts (NOUPDATE); each costs a
# re-evaluation of the changed messages after every change.
MAX_CONTEXTS = 10

R = c.SearchReturn


def ordered_set(numbers: Iterable[int]) -> str:
    """A sequence set listing `numbers` in the given order: runs that go up by one
    become ``a:b``, nothing is reordered (ESORT ALL, RFC 5267 §3)."""
    out: list[str] = []
    start = prev = None
    for n in numbers:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = n
    if start is not None:
        out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out)


def partial_range(numbers: Sequence[int], low: int, high: int) -> str:
    """RFC 5267 §4.4 ``PARTIAL (low:high set)``: positions low..high (1-based) of the
    result, NIL when none is in range."""
    chosen = numbers[low - 1 : high]
    return f"PARTIAL ({low}:{high} {ordered_set(chosen) if chosen else 'NIL'})"


def esearch(
    tag: str,
    uid: bool,
    numbers: Sequence[int],
    options: frozenset[c.SearchReturn],
    partial: tuple[int, int] | None,
    *,
    sorted_result: bool,
) -> str:
    """``ESEARCH`` data (after ``* ``) for a result in its final order."""
    parts = [f'ESEARCH (TAG "{tag}")']
    if uid:
        parts.append("UID")
    if numbers and R.MIN in options:
        parts.append(f"MIN {numbers[0] if sorted_result else min(numbers)}")
    if numbers and R.MAX in options:
        parts.append(f"MAX {numbers[-1] if sorted_result else max(numbers)}")
    if numbers and R.ALL in options:
        parts.append("ALL " + ordered_set(numbers if sorted_result else sorted(numbers)))
    if R.COUNT in options:
        parts.append(f"COUNT {len(numbers)}")
    if partial is not None:
        parts.append(partial_range(numbers if sorted_result else sorted(numbers), *partial))
    return " ".join(parts)


def saved_set(uids: Iterable[int]) -> c.SequenceSet:
    """The UID sequence set of a saved result."""
    ranges: list[c.SeqRange] = []
    for part in ordered_set(sorted(set(uids))).split(","):
        if part:
            a, _, b = part.partition(":")
            ranges.append(c.SeqRange(int(a), int(b or a)))
    return c.SequenceSet(tuple(ranges))


def resolve_saved(key: c.SearchKey, saved: Sequence[int]) -> c.SearchKey:
    """`key` with every ``$`` replaced by the UIDs of the saved result (RFC 5182 §2.1)."""
    if isinstance(key, c.SearchSequence) and key.sequence_set.saved:
        return c.SearchSequence(saved_set(saved), uid=True)
    if isinstance(key, c.SearchNot):
        return c.SearchNot(resolve_saved(key.key, saved))
    if isinstance(key, c.SearchOr):
        return c.SearchOr(resolve_saved(key.left, saved), resolve_saved(key.right, saved))
    if isinstance(key, c.SearchAnd):
        return c.SearchAnd(tuple(resolve_saved(k, saved) for k in key.keys))
    return key


def to_save(numbers: Sequence[int], options: frozenset[c.SearchReturn]) -> list[int]:
    """What ``RETURN (SAVE ...)`` keeps (RFC 5182 §2.4): with MIN and/or MAX but neither
    ALL nor COUNT, only those; otherwise the whole result."""
    if numbers and options & {R.MIN, R.MAX} and not options & {R.ALL, R.COUNT}:
        keep = []
        if R.MIN in options:
            keep.append(min(numbers))
        if R.MAX in options:
            keep.append(max(numbers))
        return sorted(set(keep))
    return list(numbers)


@dataclass
class SearchContext:
    """A live search or sort (RFC 5267 §4.1). `result` holds UIDs in result order
    (ascending for SEARCH, sort order for SORT); `seen` the MODSEQ of each message
    when it was last evaluated."""

    tag: str
    uid: bool
    criteria: c.SearchKey
    sort: tuple[c.SortCriterion, ...] | None
    options: frozenset[c.SearchReturn]
    result: list[int] = field(default_factory=list)
    seen: dict[int, int] = field(default_factory=dict)
    stale: bool = False

    @property
    def incremental(self) -> bool:
        """ADDTO/REMOVEFROM (ALL, or no other data asked) rather than new MIN/MAX/COUNT."""
        return R.ALL in self.options or not self.options & {R.MIN, R.MAX, R.COUNT}

    def _head(self) -> str:
        return f'ESEARCH (TAG "{self.tag}")' + (" UID" if self.uid else "")

    def drop(self, uid: int, seq: int) -> str | None:
        """The message `uid` (number `seq`) is about to be expunged: the update to send
        before its EXPUNGE, if it was in the result."""
        self.seen.pop(uid, None)
        if uid not in self.result:
            return None
        pos = self.result.index(uid) + 1 if self.sort is not None else 0
        self.result.remove(uid)
        if not self.incremental:
            self.stale = True  # new MIN/MAX/COUNT at the next update
            return None
        return f"{self._head()} REMOVEFROM ({pos} {uid if self.uid else seq})"

    def update(self, new_result: Sequence[int], number: Callable[[int], int]) -> str | None:
        """Replace the result by `new_result` (UIDs in result order); the update to send
        when it differs. `number` maps a UID to what the client sees (UID or number)."""
        old = self.result
        if list(new_result) == old and not self.stale:
            return None
        self.result = list(new_result)
        self.stale = False
        if not self.incremental:
            shown = [number(u) for u in self.result]
            out = [self._head()]
            if shown and R.MIN in self.options:
                out.append(f"MIN {shown[0] if self.sort is not None else min(shown)}")
            if shown and R.MAX in self.options:
                out.append(f"MAX {shown[-1] if self.sort is not None else max(shown)}")
            if R.COUNT in self.options:
                out.append(f"COUNT {len(shown)}")
            return " ".join(out)
        old_set, new_set = set(old), set(new_result)
        removed = [u for u in old if u not in new_set]
        added = [u for u in new_result if u not in old_set]
        parts: list[str] = []
        if self.sort is None:
            # RFC 5267 §4.3: an unsorted context has no positions (0).
            if removed:
                parts.append(f"REMOVEFROM (0 {ordered_set(sorted(number(u) for u in removed))})")
            if added:
                parts.append(f"ADDTO (0 {ordered_set(sorted(number(u) for u in added))})")
        else:
            # Removals at their old positions, last first; additions at their final
            # positions, first first: applied in this order, every position is valid.
            # A message whose place in the order changed is removed and added again.
            kept = [u for u in old if u in new_set]
            moved = set(_moved(kept, list(new_result)))
            out_pairs = sorted(
                ((i + 1, u) for i, u in enumerate(old) if u not in new_set or u in moved),
                reverse=True,
            )
            if out_pairs:
                parts.append("REMOVEFROM " + " ".join(f"({p} {number(u)})" for p, u in out_pairs))
            readd = set(added) | moved
            in_pairs = [(i + 1, u) for i, u in enumerate(new_result) if u in readd]
            if in_pairs:
                parts.append("ADDTO " + " ".join(f"({p} {number(u)})" for p, u in in_pairs))
        return f"{self._head()} " + " ".join(parts) if parts else None


def _moved(old: list[int], new: list[int]) -> list[int]:
    """UIDs present in both whose relative order differs: those not on a longest
    common ordered run (patience-like: the longest increasing subsequence of the old
    positions taken in the new order)."""
    pos = {u: i for i, u in enumerate(old)}
    seq = [pos[u] for u in new if u in pos]
    if seq == sorted(seq):
        return []
    # longest increasing subsequence of seq
    tails: list[int] = []
    tails_idx: list[int] = []
    prev: list[int] = [-1] * len(seq)
    for i, v in enumerate(seq):
        j = bisect.bisect_left(tails, v)
        if j == len(tails):
            tails.append(v)
            tails_idx.append(i)
        else:
            tails[j] = v
            tails_idx[j] = i
        prev[i] = tails_idx[j - 1] if j else -1
    keep: set[int] = set()
    k = tails_idx[-1] if tails_idx else -1
    while k >= 0:
        keep.add(seq[k])
        k = prev[k]
    return [old[v] for v in seq if v not in keep]
