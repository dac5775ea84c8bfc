"""Gateway mode, the DOWN direction's decisions (pure: no I/O, no SQL, no asyncio).

Given what the local mirror knows of one folder (the operator's UIDVALIDITY when last
seen, and for each mirrored message its remote UID, local UID and the operator's flags
as last seen) and what the operator shows now (UIDVALIDITY, every UID with its flags),
`plan_folder` says what to download, which flag changes are the operator's, and which
messages the operator expunged. The operator is the authority:

- a UID the operator has and we do not map: download it (ascending, so local UIDs keep
  the operator's order);
- flags that differ from the flags last seen *from the operator* changed there (its
  webmail, another client): they are applied locally, the operator winning (local
  changes were replayed before this comparison, `relay.upstream.sync`);
- a mapped UID the operator no longer has was expunged there: expunged locally, even if
  a local flag change is pending (an expunge wins over a flag change, issue 12);
- a new UIDVALIDITY (RFC 3501 §2.3.1.1: every UID of the folder is void) does not
  re-download the folder: `rematch` pairs local and remote messages by Message-ID and
  size, so clients see no duplicates; what pairs keeps its local UID.

With CONDSTORE (RFC 7162 §3.1) the caller may pass only the flags changed since the
folder's HIGHESTMODSEQ (`partial_flags=True`) together with the full UID list: flags
of UIDs absent from `remote.flags` are then taken as unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "FlagChange",
    "FolderPlan",
    "Known",
    "LocalCopy",
    "Rematch",
    "RemoteCopy",
    "RemoteFolder",
    "clean_flags",
    "plan_folder",
    "rematch",
]


def clean_flags(flags: Sequence[str] | frozenset[str]) -> frozenset[str]:
    """The operator's flags as stored locally: \\Recent dropped, system flags in
    their canonical case (RFC 3501 §2.3.2 flags are case-insensitive)."""
    canon = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}
    out = set()
    for f in flags:
        if f.lower() == "\\recent":
            continue
        out.add(canon.get(f.lower(), f))
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Known:
    """A mirrored message: its remote UID, local UID, and the operator's flags as last
    seen (`upstream_messages`)."""

    remote_uid: int
    local_uid: int
    flags: frozenset[str]


@dataclass(frozen=True, slots=True)
class RemoteFolder:
    """What the operator shows of one folder now."""

    uidvalidity: int
    uids: frozenset[int]
    flags: Mapping[int, frozenset[str]]  # remote UID -> flags (all, or changed ones)
    partial_flags: bool = False  # CONDSTORE CHANGEDSINCE: absent UIDs are unchanged


@dataclass(frozen=True, slots=True)
class FlagChange:
    known: Known
    flags: frozenset[str]  # the operator's flags now


@dataclass(frozen=True, slots=True)
class FolderPlan:
    """What one round does to one folder."""

    fetch: tuple[int, ...]  # remote UIDs to download, ascending
    flags: tuple[FlagChange, ...]
    expunged: tuple[Known, ...]  # gone at the operator: remove locally
    uidvalidity_changed: bool  # True: nothing else is planned, call `rematch`

    @property
    def empty(self) -> bool:
        return not (self.fetch or self.flags or self.expunged or self.uidvalidity_changed)


def plan_folder(
    stored_uidvalidity: int, known: Sequence[Known], remote: RemoteFolder
) -> FolderPlan:
    """The round for one folder. `stored_uidvalidity` 0: never selected (first sync)."""
    if stored_uidvalidity not in (0, remote.uidvalidity) and known:
        return FolderPlan((), (), (), uidvalidity_changed=True)
    by_remote = {k.remote_uid: k for k in known}
    fetch = tuple(sorted(remote.uids - by_remote.keys()))
    expunged = tuple(k for uid, k in sorted(by_remote.items()) if uid not in remote.uids)
    changes = []
    for uid, k in sorted(by_remote.items()):
        if uid not in remote.uids:
            continue
        now = remote.flags.get(uid)
        if now is None:
            if remote.partial_flags:
                continue
            now = frozenset()
        now = clean_flags(now)
        if now != k.flags:
            changes.append(FlagChange(k, now))
    return FolderPlan(fetch, tuple(changes), expunged, uidvalidity_changed=False)


@dataclass(frozen=True, slots=True)
class LocalCopy:
    """A local message of the folder, for re-matching after a UIDVALIDITY change."""

    local_uid: int
    message_id: str | None
    size: int


@dataclass(frozen=True, slots=True)
class RemoteCopy:
    remote_uid: int
    message_id: str | None
    size: int
    flags: frozenset[str]


@dataclass(frozen=True, slots=True)
class Rematch:
    """Local ↔ remote pairs under the new UIDVALIDITY; what is left to download; the
    local messages the operator no longer has."""

    pairs: tuple[tuple[LocalCopy, RemoteCopy], ...]
    fetch: tuple[int, ...]
    dropped: tuple[LocalCopy, ...]


def rematch(local: Sequence[LocalCopy], remote: Sequence[RemoteCopy]) -> Rematch:
    """Pair by (Message-ID, size), oldest first on both sides, so two copies of one
    message pair with two copies. A message without a Message-ID never pairs (it is
    downloaded again and the local copy dropped: no guess)."""
    waiting: dict[tuple[str, int], list[LocalCopy]] = {}
    for lc in sorted(local, key=lambda c: c.local_uid):
        if lc.message_id:
            waiting.setdefault((lc.message_id, lc.size), []).append(lc)
    pairs: list[tuple[LocalCopy, RemoteCopy]] = []
    fetch: list[int] = []
    for rc in sorted(remote, key=lambda c: c.remote_uid):
        queue = waiting.get((rc.message_id, rc.size)) if rc.message_id else None
        if queue:
            pairs.append((queue.pop(0), rc))
        else:
            fetch.append(rc.remote_uid)
    paired = {lc.local_uid for lc, _ in pairs}
    dropped = tuple(
        lc for lc in sorted(local, key=lambda c: c.local_uid) if lc.local_uid not in paired
    )
    return Rematch(tuple(pairs), tuple(fetch), dropped)
