"""Gateway mode, the UP direction: what to ask the operator for each journaled local
change, and what its answers mean. Pure: no socket, no SQL (the I/O is in
`relay.upstream.replayer`).

The journal (`upstream_journal`, written by `relay.store.mailstore` in the transaction
of each local change) is replayed in `id` order, once:

- before a command that is not idempotent goes out (APPEND, COPY, MOVE), the row is
  marked *in flight* in its own commit; the outcome (the row gone, the UID map
  updated) commits in one transaction. A replay cut between the two (a crash, a
  SIGKILL, the connection lost) finds the row still in flight and first *looks* at
  the operator: an APPEND or COPY whose Message-ID is already in the target folder is
  not sent again (`search_message_id`); a MOVE whose source UIDs are gone is done.
- flags (`UID STORE +FLAGS/-FLAGS`, never a FLAGS replacement, so what the operator
  changed on other flags stays), `UID EXPUNGE` (RFC 4315) and folder commands are
  idempotent or answer in a way that says "already done" ([ALREADYEXISTS],
  [NONEXISTENT], RFC 5530): they are simply sent again.
- with CONDSTORE (RFC 7162 §3.1.3) a flag change carries `UNCHANGEDSINCE` the
  operator's MODSEQ as last mirrored: a message changed at the operator meanwhile is
  answered [MODIFIED] and left as the operator has it (the operator wins; the folder
  is re-compared by the down sync). Without CONDSTORE the change is sent as is and
  the down sync's comparison brings both sides to the operator's state.
- an expunge is `UID STORE +FLAGS.SILENT (\\Deleted)` then `UID EXPUNGE` (UIDPLUS); an
  operator without UIDPLUS gets `EXPUNGE`, which also removes messages flagged
  \\Deleted at the operator by someone else (RFC 3501 §6.4.3; said in the notes).
- MOVE (RFC 6851) when offered, else COPY + \\Deleted + UID EXPUNGE.

An answer is DONE, REFUSED (the operator said NO or BAD: recorded, audited, shown by
`upstream status`, then the local state is brought back to the operator's) or RETRY
(the connection broke, or the operator said it is temporarily unable: RFC 5530
[UNAVAILABLE], [INUSE], [SERVERBUG], [LIMIT]; the row stays, in order, for the next
round).

Sent copies: mss-relay's submission to the operator (`relay.delivery`) does not ask
it to keep a copy (RFC 6409 submission has no such thing); the copy the client saves
in Sent reaches the operator once, by the journal's APPEND. An operator that saves a
copy of submitted mail itself would hold two; the APPEND's Message-ID check skips the
upload when the operator's copy is already there when the row is replayed.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "FLAGS_ITEM",
    "MODSEQ_ITEM",
    "UID_ITEM",
    "Answer",
    "OperatorCaps",
    "Verdict",
    "appenduid",
    "copyuid",
    "fetched_flags",
    "flag_list",
    "imap_quote",
    "judge",
    "modified",
    "parse_uid_set",
    "search_uids",
    "select_uidvalidity",
    "store_args",
    "uid_set",
]

# Flags the operator never receives: \Recent is per session (RFC 3501 §2.3.2).
LOCAL_ONLY_FLAGS = frozenset({"\\Recent"})
_CODE = re.compile(rb"^(?:OK |NO |BAD )?\[([A-Z-]+)(?: ([^\]]*))?\]")
_FETCH = re.compile(rb"^\d+ FETCH \((.*)\)$")
UID_ITEM = re.compile(rb"\bUID (\d+)")
MODSEQ_ITEM = re.compile(rb"\bMODSEQ \((\d+)\)")
FLAGS_ITEM = re.compile(rb"\bFLAGS \(([^)]*)\)")
_ATOM_SAFE = re.compile(r"^[A-Za-z0-9_.\-/]+$")
# RFC 5530 response codes that say "not now" rather than "no".
_TRANSIENT_CODES = frozenset({"UNAVAILABLE", "INUSE", "SERVERBUG", "LIMIT", "CONTACTADMIN"})


@dataclass(frozen=True, slots=True)
class OperatorCaps:
    """What the operator offers that the replay uses (from its CAPABILITY)."""

    condstore: bool
    uidplus: bool
    move: bool

    @classmethod
    def from_capabilities(cls, caps: Iterable[str]) -> OperatorCaps:
        have = {c.upper() for c in caps}
        return cls(
            condstore="CONDSTORE" in have or "QRESYNC" in have,
            uidplus="UIDPLUS" in have,
            move="MOVE" in have,
        )


@dataclass(frozen=True, slots=True)
class Answer:
    """The operator's answer to one command: tagged result and every line (untagged
    responses, then the tagged text), as aioimaplib returns them."""

    result: str  # OK | NO | BAD
    lines: tuple[bytes, ...]

    @property
    def text(self) -> str:
        """The tagged line, for the journal, the audit trail and `upstream status`."""
        last = self.lines[-1] if self.lines else b""
        return f"{self.result} {last.decode('utf-8', 'replace')}"[:500]


class Verdict(enum.Enum):
    DONE = "done"
    REFUSED = "refused"
    RETRY = "retry"


def judge(kind: str, answer: Answer) -> Verdict:
    """What an answer means for a journal row of `kind`.

    "Already so" is done: CREATE answered [ALREADYEXISTS], DELETE or RENAME answered
    [NONEXISTENT] for a folder that is not there any more (RFC 5530 §3): the change is
    what the operator has, which is what a replay after a crash sees."""
    if answer.result == "OK":
        return Verdict.DONE
    code = response_code(answer)
    if code in _TRANSIENT_CODES:
        return Verdict.RETRY
    if kind == "create" and code == "ALREADYEXISTS":
        return Verdict.DONE
    if kind == "delete" and code == "NONEXISTENT":
        return Verdict.DONE
    return Verdict.REFUSED


def response_code(answer: Answer) -> str | None:
    """The tagged line's response code (RFC 3501 §7.1), upper case, or None."""
    if not answer.lines:
        return None
    m = _CODE.match(answer.lines[-1])
    return m.group(1).decode("ascii") if m else None


def _codes(answer: Answer, name: bytes) -> list[bytes]:
    out = []
    for line in answer.lines:
        m = _CODE.match(line)
        if m and m.group(1) == name and m.group(2) is not None:
            out.append(m.group(2))
    return out


def appenduid(answer: Answer) -> tuple[int, int] | None:
    """(UIDVALIDITY, UID) of an APPEND's [APPENDUID] (RFC 4315 §3)."""
    for args in _codes(answer, b"APPENDUID"):
        parts = args.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            return int(parts[0]), int(parts[1])
    return None


def copyuid(answer: Answer) -> tuple[int, dict[int, int]] | None:
    """(UIDVALIDITY, source UID -> destination UID) of a COPY's or MOVE's [COPYUID]
    (RFC 4315 §3; RFC 6851 §4.3 sends it in an untagged OK before the expunges)."""
    for args in _codes(answer, b"COPYUID"):
        parts = args.split()
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        src = parse_uid_set(parts[1].decode("ascii"))
        dst = parse_uid_set(parts[2].decode("ascii"))
        if len(src) == len(dst):
            return int(parts[0]), dict(zip(src, dst, strict=True))
    return None


def modified(answer: Answer) -> list[int]:
    """UIDs a conditional STORE left alone ([MODIFIED], RFC 7162 §3.1.3)."""
    out: list[int] = []
    for args in _codes(answer, b"MODIFIED"):
        out += parse_uid_set(args.decode("ascii"))
    return out


def fetched_flags(answer: Answer) -> dict[int, tuple[int | None, frozenset[str]]]:
    """UID -> (MODSEQ, FLAGS) from the untagged FETCH responses of a UID STORE (RFC
    3501 §6.4.8 with UID; MODSEQ with CONDSTORE enabled, RFC 7162 §3.1.4)."""
    out: dict[int, tuple[int | None, frozenset[str]]] = {}
    for line in answer.lines:
        m = _FETCH.match(line)
        if not m:
            continue
        body = m.group(1)
        uid = UID_ITEM.search(body)
        flags = FLAGS_ITEM.search(body)
        if uid is None or flags is None:
            continue
        modseq = MODSEQ_ITEM.search(body)
        out[int(uid.group(1))] = (
            int(modseq.group(1)) if modseq else None,
            frozenset(flags.group(1).decode("utf-8", "replace").split()),
        )
    return out


def select_uidvalidity(answer: Answer) -> int | None:
    """The UIDVALIDITY a SELECT answered (RFC 3501 §7.1, "OK [UIDVALIDITY n]")."""
    for args in _codes(answer, b"UIDVALIDITY"):
        if args.strip().isdigit():
            return int(args)
    return None


def search_uids(answer: Answer) -> list[int]:
    """The UIDs of a UID SEARCH answer (aioimaplib gives "* SEARCH 1 2" as b"1 2")."""
    out: list[int] = []
    for line in answer.lines[:-1]:
        words = line.split()
        if words and words[0] == b"SEARCH":
            words = words[1:]
        if all(w.isdigit() for w in words):
            out += [int(w) for w in words]
    return sorted(set(out))


def uid_set(uids: Iterable[int]) -> str:
    """An IMAP sequence set of UIDs, in ranges: [1, 2, 3, 7] -> "1:3,7"."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("empty UID set")
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(f"{start}:{prev}" if start != prev else str(start))
        start = prev = uid
    parts.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(parts)


def parse_uid_set(text: str) -> list[int]:
    """The UIDs of a set without "*" ("1:3,7" -> [1, 2, 3, 7]), as the operator sends
    them in COPYUID and MODIFIED; a malformed part is ignored."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            continue
        a, b = int(lo), int(hi or lo)
        out += range(min(a, b), max(a, b) + 1)
    return out


def flag_list(flags: Iterable[str]) -> str:
    """A parenthesised flag list (RFC 3501 §9 flag-list), session-only flags left out."""
    return "(" + " ".join(sorted(set(flags) - LOCAL_ONLY_FLAGS)) + ")"


def store_args(
    uids: Sequence[int], *, add: bool, flags: Iterable[str], unchanged_since: int | None
) -> list[str]:
    """Arguments of `UID STORE` for a flag delta (RFC 3501 §6.4.6; RFC 7162 §3.1.3)."""
    args = [uid_set(uids)]
    if unchanged_since is not None:
        args.append(f"(UNCHANGEDSINCE {unchanged_since})")
    args += ["+FLAGS" if add else "-FLAGS", flag_list(flags)]
    return args


def imap_quote(name: str) -> str:
    """A folder name or search string as an IMAP astring (RFC 3501 §9): atoms that
    need no quoting stay as they are, others are quoted with \\ and \" escaped.
    Non-ASCII names are the operator's modified UTF-7 business (said in the notes)."""
    if _ATOM_SAFE.match(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
