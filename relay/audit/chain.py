"""The SHA-256 hash chain over audit rows (pure).

Row n's hash is SHA-256 over row n-1's hash and row n's canonical JSON (sequence number,
time, action, who, what). Changing a row breaks its own hash; removing or reordering
rows breaks the link to the previous hash or the sequence; removing the newest rows is
caught against the head record that is updated in the same transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENESIS_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One stored audit row, as the chain sees it."""

    seq: int
    ts: str  # ISO 8601 UTC with microseconds, as stored
    action: str
    person: str | None
    box: str | None
    peer: str | None
    data: str  # canonical JSON of request, answer and details
    prev_hash: str
    hash: str


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def row_hash(
    prev_hash: str,
    *,
    seq: int,
    ts: str,
    action: str,
    person: str | None,
    box: str | None,
    peer: str | None,
    data: str,
) -> str:
    body = canonical_json(
        {
            "seq": seq,
            "ts": ts,
            "action": action,
            "person": person,
            "box": box,
            "peer": peer,
            "data": data,
        }
    )
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    rows: int
    first_broken_seq: int | None = None
    reason: str | None = None

    def __str__(self) -> str:
        if self.ok:
            return f"OK: {self.rows} audit rows, chain intact"
        return f"BROKEN at row {self.first_broken_seq}: {self.reason}"


def verify(
    rows: Iterable[AuditRow], *, head_seq: int | None, head_hash: str | None
) -> VerifyResult:
    """Walk rows in sequence order; report the first row where the chain breaks."""
    prev_hash = GENESIS_HASH
    expected_seq = 1
    count = 0
    for row in rows:
        if row.seq != expected_seq:
            why = f"expected row {expected_seq}, found {row.seq}: missing or reordered rows"
            return VerifyResult(False, count, expected_seq, why)
        if row.prev_hash != prev_hash:
            why = "link to the previous row does not match (row removed or reordered)"
            return VerifyResult(False, count, row.seq, why)
        computed = row_hash(
            prev_hash,
            seq=row.seq,
            ts=row.ts,
            action=row.action,
            person=row.person,
            box=row.box,
            peer=row.peer,
            data=row.data,
        )
        if computed != row.hash:
            why = "content does not match its hash (row modified)"
            return VerifyResult(False, count, row.seq, why)
        prev_hash = row.hash
        expected_seq += 1
        count += 1
    last_seq = expected_seq - 1
    if head_seq is not None and head_seq != last_seq:
        return VerifyResult(
            False,
            count,
            last_seq + 1,
            f"the head records {head_seq} rows but {last_seq} are present (newest rows removed)",
        )
    if head_hash is not None and count and head_hash != prev_hash:
        why = "the newest row does not match the recorded head"
        return VerifyResult(False, count, last_seq, why)
    return VerifyResult(True, count)
