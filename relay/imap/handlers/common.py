"""What every handler module shares: the result type, the typed refusals (each with its
IMAP response code), and the helpers that resolve a folder name, check a right and
record an audit event.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from relay.audit.events import AuditEvent
from relay.config.model import BoxType, SeenMode
from relay.errors import PermissionDenied, ProtocolError
from relay.identity.auth import method_allowed
from relay.imap import acl, names
from relay.imap import commands as c
from relay.imap import response as r
from relay.imap.names import Target, View
from relay.imap.parser import decode_mailbox_name
from relay.imap.session import Selected, Session

Result: TypeAlias = "tuple[str, r.ResponseCode | r.Code | None] | None"
Handler: TypeAlias = Callable[[Session, Any], Awaitable[Result]]

RAW_BATCH = 50  # messages whose bytes are decrypted at once (bounds memory)


# --------------------------------------------------------------------------- errors


class ImapError(ProtocolError):
    """A refusal with an IMAP response code; `text` is sent as is."""

    imap_code: str | None = None


class NoSuchMailbox(ImapError):
    imap_code = "NONEXISTENT"


class TryCreate(ImapError):
    imap_code = "TRYCREATE"


class AlreadyExists(ImapError):
    imap_code = "ALREADYEXISTS"


class Cannot(ImapError):
    imap_code = "CANNOT"


class PrivacyRequired(ImapError):
    imap_code = "PRIVACYREQUIRED"


class NoPermission(ImapError, PermissionDenied):
    """NO [NOPERM]; audited where it is mapped to a response (`Session._run_command`)."""

    imap_code = "NOPERM"


class Limit(ImapError):
    imap_code = "LIMIT"  # RFC 5530: an implementation limit


class ClientBug(ImapError):
    imap_code = "CLIENTBUG"
    imap_status = "BAD"


class UnknownCte(ImapError):
    imap_code = "UNKNOWN-CTE"


# ------------------------------------------------------------------------- helpers


def today(s: Session) -> dt.date:
    return s.runtime.today()


def view(s: Session) -> View:
    """The boxes this session sees, from the config of the moment."""
    assert s.principal is not None
    config = s.runtime.config
    person = s.principal.person_id
    day = today(s)
    method = s.principal.method
    if s.principal.as_box is not None:
        box = config.mailbox(s.principal.as_box)
        ok = box is not None and box.rights_of(person, day) and method_allowed(box, method)
        return View(s.principal.as_box if ok else None, ())
    personal = next(
        (
            m.address
            for m in config.mailboxes
            if m.type is BoxType.PER and m.owner == person and method_allowed(m, method)
        ),
        None,
    )
    # A box that requires another login method (auth.methods) is not shown at all.
    shared = tuple(
        sorted(
            m.address
            for m in config.mailboxes
            if m.address != personal and m.rights_of(person, day) and method_allowed(m, method)
        )
    )
    return View(personal, shared)


def rights(s: Session, target: Target) -> str:
    """The rights letters of the person on `target` (RFC 4314), from the config of the
    moment and today's date: worked out once per folder while both hold."""
    principal = s.principal
    assert principal is not None
    config, day = s.runtime.config, today(s)
    # The selected folder's special-use attribute is known: Drafts is the \\Drafts folder.
    sel = s.selected
    special = sel.folder.special_use if sel is not None and sel.target == target else acl.UNKNOWN
    memo = s.rights_memo
    if memo is None or memo[0] is not config or memo[1] != day or memo[2] is not principal:
        memo = s.rights_memo = (config, day, principal, {})
    key = (target, special)
    have = memo[3].get(key)
    if have is None:
        box = config.mailbox(target.box)
        if box is None or not method_allowed(box, principal.method):
            have = ""
        else:
            have = acl.letters(box.rights_of(principal.person_id, day), target.folder, special)
        memo[3][key] = have
    return have


def need(s: Session, target: Target, letters: str, doing: str) -> None:
    """NO [NOPERM] unless the person holds every right in `letters` on `target`."""
    have = rights(s, target)
    missing = [ch for ch in letters if ch not in have]
    if missing:
        refusal = NoPermission(
            f"You do not have the right to {doing} in {target.box} ({target.folder}); "
            "rights are set in the mss-relay configuration"
        )
        if traced(s, target.box):
            refusal.audited_box, refusal.folder = target.box, target.folder
        raise refusal


def check_new_folder_name(s: Session, target: Target) -> None:
    """NO [LIMIT] for a folder name too long or too deep to create (issue 9, item 8):
    nothing is created."""
    limits = s.runtime.config.limits
    size = len(target.folder.encode())
    if size > limits.imap_max_folder_name_bytes:
        raise Limit(
            f"Folder name too long: {size} bytes, at most {limits.imap_max_folder_name_bytes}"
        )
    depth = target.folder.count(names.DELIMITER) + 1
    if depth > limits.imap_max_folder_depth:
        raise Limit(f"Folder too deep: {depth} levels, at most {limits.imap_max_folder_depth}")


def seen_person(s: Session, box: str) -> str | None:
    """The person id when \\Seen is per person on `box`, else None (shared \\Seen)."""
    assert s.principal is not None
    m = s.runtime.config.mailbox(box)
    if m is not None and m.seen is SeenMode.PER_PERSON:
        return s.principal.person_id
    return None


def traced(s: Session, box: str) -> bool:
    """Whether actions on `box` are audited: any box but the person's own PER box."""
    assert s.principal is not None
    m = s.runtime.config.mailbox(box)
    return not (m is not None and m.type is BoxType.PER and m.owner == s.principal.person_id)


def who(s: Session, box: str, request: str) -> dict[str, Any]:
    """The common audit fields."""
    assert s.principal is not None
    return {"person": s.principal.person_id, "box": box, "peer": s.peer, "request": request}


def mailbox_name(raw: str) -> str:
    """A client's mailbox name, INBOX normalised. A name that is not valid modified
    UTF-7 is still a valid astring (``&'+,-`` are atom characters): it names no
    mailbox there can be, so NO, not BAD (as Dovecot answers)."""
    if decode_mailbox_name(raw) is None:
        raise Cannot("Mailbox name is not valid modified UTF-7 (RFC 3501 §5.1.3)")
    return names.normalise(raw)


def target_of(s: Session, raw: str, *, trycreate: bool = False) -> Target:
    """The folder a client names; NO [NONEXISTENT] (or TRYCREATE) if it is not visible."""
    name = mailbox_name(raw)
    target = names.resolve(name, view(s))
    if target is None or "l" not in rights(s, target):
        if trycreate:
            raise TryCreate("No such mailbox")
        raise NoSuchMailbox("No such mailbox")
    return target


async def existing(s: Session, raw: str, *, trycreate: bool = False) -> Target:
    target = target_of(s, raw, trycreate=trycreate)
    # For a destination (APPEND, COPY: `trycreate`) a folder known to exist is enough:
    # the command checks again in its own transaction (a folder gone by then is
    # answered NO [TRYCREATE] by the session).
    if await s.runtime.indexes.find(target.box, target.folder, current=not trycreate) is None:
        if trycreate:
            raise TryCreate("No such mailbox")
        raise NoSuchMailbox("No such mailbox")
    return target


def selected(s: Session) -> Selected:
    assert s.selected is not None
    return s.selected


def capabilities(s: Session) -> list[str]:
    return s.service.capabilities(s)


async def record(s: Session, event: AuditEvent) -> None:
    await s.runtime.store.record(event)


def writable(s: Session) -> Selected:
    sel = selected(s)
    if sel.read_only:
        raise Cannot("The mailbox is read-only (EXAMINE or no right to change it)")
    return sel


def members(sel: Selected, seqset: c.SequenceSet, uid: bool) -> list[int]:
    """The UIDs a sequence set names, ascending (RFC 3501 §6.4.8 for UID sets)."""
    if seqset.saved:
        # RFC 5182 §2.1: "$" is the saved result, less what was expunged since.
        return sorted(u for u in sel.saved if u in sel.flags)
    if uid:
        # Each range is a slice of the sorted UID list: O(ranges · log n), not O(n).
        largest = sel.largest_uid
        found: set[int] = set()
        for rng in seqset.ranges:
            low, high = rng.bounds(largest)
            lo = bisect.bisect_left(sel.uids, low)
            hi = bisect.bisect_right(sel.uids, high)
            found.update(sel.uids[lo:hi])
        return sorted(found)
    n = len(sel.uids)
    for rng in seqset.ranges:
        for bound in (rng.start, rng.stop):
            if bound is not None and (bound > n or bound < 1):
                raise ClientBug("Invalid message sequence number")
    return [sel.uids[i - 1] for i in seqset.iter(n)]
