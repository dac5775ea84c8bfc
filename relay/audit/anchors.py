"""Anchors: the audit head written outside the database, to prove what it held.

Whoever can write the database can delete the newest audit rows and move the head
back, and, holding the audit key, rewrite rows and recompute every later hash. What
they cannot change is what was already written elsewhere: every few minutes
(`limits.audit_anchor_interval_seconds`) and at stop, the daemon appends the head it
wrote (row count and hash) to an append-only file in the state folder
(`storage.audit_anchor_file`) and to the log. `audit verify` compares the chain with
every anchor: fewer rows than an anchor records is a truncation, another hash at an
anchored row is a rewrite, and it names the anchor that shows it.

Each line is one JSON object, MACed with the audit key (HMAC-SHA256), so a line made up
without the key is refused rather than trusted:

    {"ts": "...", "seq": 1234, "hash": "...", "keyed_from": 1, "key_id": "...",
     "node": "...", "reason": "interval", "mac": "..."}

This module is pure but for `append_line` and `read_lines` (the file edge).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.audit.chain import VerifyResult, canonical_json

_FIELDS = ("ts", "seq", "hash", "keyed_from", "key_id", "node", "reason")


@dataclass(frozen=True, slots=True)
class Anchor:
    """The audit head as one node wrote it at one moment."""

    ts: str  # ISO 8601 UTC
    seq: int  # rows in the chain (the head's sequence number)
    hash: str  # the head row's hash
    keyed_from: int | None  # first keyed row, as the head said then
    key_id: str  # the audit key's id
    node: str
    reason: str  # start | interval | stop
    mac: str = ""
    line: int = 0  # line number in the file (set when read)

    def fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS}

    def describe(self, path: Path | str) -> str:
        return f"the anchor of {self.ts} ({path} line {self.line})"


def _mac(key: bytes, fields: Mapping[str, Any]) -> str:
    return hmac.new(key, canonical_json(dict(fields)).encode(), hashlib.sha256).hexdigest()


def make_anchor(key: bytes, **fields: Any) -> Anchor:
    """An anchor with its MAC (`fields`: every field of `Anchor` but mac and line)."""
    anchor = Anchor(**fields)
    return Anchor(**anchor.fields(), mac=_mac(key, anchor.fields()))


def to_line(anchor: Anchor) -> str:
    return canonical_json({**anchor.fields(), "mac": anchor.mac}) + "\n"


def parse(lines: Sequence[str], key: bytes | None) -> tuple[list[Anchor], list[str]]:
    """Anchors from the file's lines, and a problem for each line that is not one.

    A line whose MAC does not verify with `key` is a problem, not an anchor: a forged
    anchor must not vouch for a forged chain. Without a key nothing is trusted.
    """
    anchors: list[Anchor] = []
    problems: list[str] = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            raw = json.loads(text)
            fields = {name: raw[name] for name in _FIELDS}
            anchor = Anchor(**fields, mac=str(raw["mac"]), line=number)
            if not isinstance(anchor.seq, int) or not isinstance(anchor.hash, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            problems.append(f"line {number}: not an anchor (damaged or edited)")
            continue
        if key is None or not hmac.compare_digest(_mac(key, fields), anchor.mac):
            problems.append(
                f"line {number}: its MAC does not verify with the audit key (forged or damaged)"
            )
            continue
        anchors.append(anchor)
    return anchors, problems


@dataclass(frozen=True, slots=True)
class Contradiction:
    """An anchor the database disagrees with."""

    anchor: Anchor
    first_bad_seq: int  # the first row the anchor shows removed or rewritten
    text: str


def check(
    anchors: Sequence[Anchor],
    hashes: Mapping[int, str],
    *,
    rows: int,
    keyed_from: int | None,
    path: Path | str,
) -> list[Contradiction]:
    """Compare the chain (`hashes`: seq → stored hash; `rows`: the highest seq present)
    with each anchor; one contradiction per anchor it disagrees with, oldest first."""
    out: list[Contradiction] = []
    for a in anchors:
        name = a.describe(path)
        if a.seq > rows:
            out.append(
                Contradiction(
                    a,
                    rows + 1,
                    f"{name} recorded {a.seq} rows, the database holds {rows}: rows "
                    f"{rows + 1} to {a.seq} were removed (truncation)",
                )
            )
        elif a.seq > 0 and hashes.get(a.seq) != a.hash:
            stored = hashes.get(a.seq)
            out.append(
                Contradiction(
                    a,
                    a.seq,
                    f"{name} recorded row {a.seq} with hash {a.hash[:16]}…, the database "
                    f"has {stored[:16] + '…' if stored else 'no such row'}: rows up to "
                    f"{a.seq} were rewritten",
                )
            )
        elif a.keyed_from != keyed_from:
            out.append(
                Contradiction(
                    a,
                    a.keyed_from or 1,
                    f"{name} recorded the chain keyed from row {a.keyed_from}, the "
                    f"database says {keyed_from}: the keyed rows were passed off as "
                    "unkeyed (or the reverse)",
                )
            )
    return out


def judge(
    result: VerifyResult,
    *,
    anchors: Sequence[Anchor],
    contradictions: Sequence[Contradiction],
    problems: Sequence[str],
    anchor_file: Path | None,
    keyed_from: int | None,
    audit_key_registered: bool,
    rows: int,
) -> VerifyResult:
    """The chain's own verdict, completed with what the anchors say."""
    findings = list(result.findings)
    findings += [f"contradicts {c.text}" for c in contradictions]
    findings += [f"anchor file {anchor_file}, {p}" for p in problems]
    notes = list(result.notes)
    ok = result.ok and not contradictions and not problems
    first, reason = result.first_broken_seq, result.reason
    if audit_key_registered and keyed_from is None:
        ok = False
        findings.append(
            "an audit key is registered for this store but its head says no row is "
            "keyed: the chain was passed off as unkeyed"
        )
    if result.ok and not ok:
        if contradictions:
            first = min(c.first_bad_seq for c in contradictions)
            reason = f"the database contradicts {len(contradictions)} anchor(s)"
        else:
            first, reason = None, "the anchors cannot vouch for the chain"
    if keyed_from is not None and keyed_from > 1:
        notes.append(
            f"rows 1 to {keyed_from - 1} were written before this store had an audit key "
            "(plain SHA-256); the anchors written since cover them"
        )
    summary = result.summary
    if anchor_file is None:
        if rows:
            notes.append(
                "no anchor file: the chain was checked against the database alone "
                "(the daemon writes anchors every few minutes and at stop)"
            )
    elif anchors:
        newest = anchors[-1]
        summary += (
            f"; agrees with {len(anchors)} anchor(s) in {anchor_file} (newest {newest.ts}, "
            f"{newest.seq} rows)"
            if ok
            else ""
        )
        if ok and anchors[-1].seq < rows:
            notes.append(
                f"rows {newest.seq + 1} to {rows} came after the newest anchor: someone "
                "holding the audit key could still rewrite those"
            )
    return VerifyResult(
        ok, result.rows, first, reason, tuple(findings), tuple(notes), summary if ok else ""
    )


# --- the file edge --------------------------------------------------------------------


def append_line(path: Path, line: str) -> None:
    """Append one line (O_APPEND: one write, never over what is there) and fsync it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[str] | None:
    """The file's lines, or None if there is no anchor file."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return None
