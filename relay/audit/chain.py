"""The keyed hash chain over audit rows (pure).

Row n's hash is HMAC-SHA256, under the audit key, of row n-1's hash and row n's
canonical JSON (sequence number, time, action, who, what). Changing a row breaks its
own hash; removing or reordering rows breaks the link to the previous hash or the
sequence; removing the newest rows is caught against the head record that is updated
in the same transaction. The key lives outside the database (relay.store.keys): whoever
can write the database but not read the key cannot recompute the hashes after a change.

Rows written before the store had an audit key (before `keyed_from`) are chained with
plain SHA-256; they are still linked to the keyed rows after them and are covered by
the anchors written outside the database (relay.audit.anchors).
"""

from __future__ import annotations

import hashlib
import hmac
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
    key: bytes | None = None,
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
    message = f"{prev_hash}\n{body}".encode()
    if key is None:
        return hashlib.sha256(message).hexdigest()  # rows before the audit key
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The verdict on the chain: the first break found, the anchors that contradict the
    database (`findings`), and what the reader should know (`notes`)."""

    ok: bool
    rows: int
    first_broken_seq: int | None = None
    reason: str | None = None
    findings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    summary: str = "chain intact"

    def __str__(self) -> str:
        if self.ok:
            lines = [f"OK: {self.rows} audit rows, {self.summary}"]
        elif self.first_broken_seq is None:
            lines = [f"BROKEN: {self.reason}"]
        else:
            lines = [f"BROKEN at row {self.first_broken_seq}: {self.reason}"]
        lines += [f"  {f}" for f in self.findings]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def verify(
    rows: Iterable[AuditRow],
    *,
    head_seq: int | None,
    head_hash: str | None,
    key: bytes | None = None,
    keyed_from: int | None = None,
) -> VerifyResult:
    """Walk rows in sequence order; report the first row where the chain breaks.

    Rows from `keyed_from` on are checked with `key` (HMAC-SHA256), earlier ones with
    plain SHA-256.
    """
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
        keyed = keyed_from is not None and row.seq >= keyed_from
        if keyed and key is None:
            why = "the row is keyed but no audit key was given"
            return VerifyResult(False, count, row.seq, why)
        computed = row_hash(
            prev_hash,
            key=key if keyed else None,
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
            if keyed:
                why += "; keyed rows can only be rehashed with the audit key"
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
