"""IMAP command handlers: one function per command type, dispatched by `HANDLERS`.

A handler receives the session and its parsed command, checks the person's rights on
the folder (RFC 4314 letters from `relay.imap.acl`, evaluated against the config of
the moment, so a reload takes effect at once), does the work through the mail store,
appends untagged responses with `s.emit`, and returns the tagged OK text and code.
Refusals are raised as typed errors that carry their response code; the session turns
them into ``NO``/``BAD`` in one place.

Traceability (issue 4): every command that touches a box other than the person's own
PER box writes one audit event naming the person — SELECT/EXAMINE, content fetches
(UIDs and Message-IDs, never content), flag changes, expunges, copies and moves,
appends, folder changes. Writes carry their event in their own transaction; reads are
recorded (durably) before the content is sent.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeAlias

import structlog

from relay.audit.events import (
    AuditEvent,
    AuthFailed,
    AuthSucceeded,
    ImapAppended,
    ImapCopied,
    ImapExpunged,
    ImapFetched,
    ImapFlagsChanged,
    ImapFolderChanged,
    ImapSelected,
)
from relay.config.model import BoxType, SeenMode, TlsMode
from relay.errors import (
    AuthenticationFailed,
    PermissionDenied,
    ProtocolError,
    TemporarilyLocked,
)
from relay.identity.auth import Principal
from relay.imap import acl, names
from relay.imap import commands as c
from relay.imap import response as r
from relay.imap.names import Target, View
from relay.imap.parser import SaslCancelled, decode_mailbox_name, is_idle_done, parse_sasl_response
from relay.imap.search import Candidate, matches, needs
from relay.imap.session import Closing, Selected, Session
from relay.imap.state import Event
from relay.message.analysis import MessageMeta, analyse
from relay.message.imapview import (
    binary_section,
    bodystructure,
    envelope,
    part_exists,
    partial,
    section,
)
from relay.store.mailstore import (
    DELETED,
    SEEN,
    Flagged,
    FolderExists,
    FolderMissing,
    MessageRow,
)
from relay.tls.peer import peer_from_ssl_object

log = structlog.get_logger("relay.imap")

Result: TypeAlias = "tuple[str, r.ResponseCode | r.Code | None] | None"
Handler: TypeAlias = Callable[[Session, Any], Awaitable[Result]]

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
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


class NoPermission(ImapError):
    imap_code = "NOPERM"


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
    if s.principal.as_box is not None:
        box = config.mailbox(s.principal.as_box)
        ok = box is not None and box.rights_of(person, day)
        return View(s.principal.as_box if ok else None, ())
    personal = next(
        (m.address for m in config.mailboxes if m.type is BoxType.PER and m.owner == person),
        None,
    )
    shared = tuple(
        sorted(
            m.address
            for m in config.mailboxes
            if m.address != personal and m.rights_of(person, day)
        )
    )
    return View(personal, shared)


def rights(s: Session, target: Target) -> str:
    assert s.principal is not None
    box = s.runtime.config.mailbox(target.box)
    if box is None:
        return ""
    return acl.letters(box.rights_of(s.principal.person_id, today(s)), target.folder)


def need(s: Session, target: Target, letters: str, doing: str) -> None:
    """NO [NOPERM] unless the person holds every right in `letters` on `target`."""
    have = rights(s, target)
    missing = [ch for ch in letters if ch not in have]
    if missing:
        raise NoPermission(
            f"You do not have the right to {doing} in {target.box} ({target.folder}); "
            "rights are set in the mss-relay configuration"
        )


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
    if decode_mailbox_name(raw) is None:
        raise ClientBug("Invalid mailbox name encoding (RFC 3501 §5.1.3)")
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
    if await s.service.mail.folder(target.box, target.folder) is None:
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


# --------------------------------------------------------------- any state (§6.1)


async def h_capability(s: Session, cmd: c.Capability) -> Result:
    s.emit(r.untagged("CAPABILITY " + " ".join(capabilities(s))))
    return "CAPABILITY completed", None


async def h_noop(s: Session, cmd: c.Noop | c.Check) -> Result:
    return f"{cmd.name} completed", None


async def h_logout(s: Session, cmd: c.Logout) -> Result:
    s.emit(r.untagged_status(r.Status.BYE, "mss-relay logging out"))
    s.emit(r.tagged(cmd.tag, r.Status.OK, "LOGOUT completed"))
    s.deselect()
    s.move(Event.LOGOUT)
    return None


async def h_id(s: Session, cmd: c.Id) -> Result:
    # RFC 2971: the server's identification; no version (it only helps attackers).
    s.emit(r.untagged(b'ID ("name" "mss-relay" "vendor" "mss-relay")'))
    return "ID completed", None


# ------------------------------------------------------------ not authenticated (§6.2)


async def h_starttls(s: Session, cmd: c.StartTls) -> Result:
    if s.tls_active or s.service.tls_context is None:
        raise ClientBug("TLS is already active or not offered here")
    s.emit(r.tagged(cmd.tag, r.Status.OK, "Begin TLS negotiation now"))
    await s.flush()
    # Plaintext pipelined after STARTTLS must not run as if it came over TLS.
    s.reader.discard_buffered()
    await s.writer.start_tls(s.service.tls_context)
    s.tls_active = True
    return None


def _secure(s: Session) -> bool:
    return s.tls_active or s.service.listener.tls is TlsMode.NONE


async def _auth_ok(s: Session, principal: Principal, mechanism: str, login: str) -> Result:
    await record(
        s,
        AuthSucceeded(
            person=principal.person_id,
            box=principal.as_box,
            peer=s.peer,
            protocol="imap",
            mechanism=mechanism,
            login=login,
            answer="OK",
        ),
    )
    s.authenticated(principal)
    return "Logged in", r.capability_code(capabilities(s))


async def _auth_failed(s: Session, mechanism: str, login: str | None, exc: ProtocolError) -> None:
    code = exc.imap_code
    if isinstance(exc, PermissionDenied):
        code = "AUTHORIZATIONFAILED"
    await record(
        s,
        AuthFailed(
            peer=s.peer,
            protocol="imap",
            mechanism=mechanism,
            login=login,
            reason=exc.log_detail or exc.text,
            answer=f"NO [{code}]",
        ),
    )
    err = ImapError(
        exc.text if not isinstance(exc, AuthenticationFailed) else "Authentication failed"
    )
    err.imap_code = code
    raise err


async def _password(
    s: Session, mechanism: str, login: str, password: str, authzid: str | None
) -> Result:
    try:
        principal = await s.runtime.authenticator.password(
            login=login, password=password, authzid=authzid, peer=s.peer
        )
    except (AuthenticationFailed, PermissionDenied, TemporarilyLocked) as exc:
        await _auth_failed(s, mechanism, login, exc)
        raise AssertionError("unreachable") from None
    return await _auth_ok(s, principal, mechanism, login)


async def h_login(s: Session, cmd: c.Login) -> Result:
    if not _secure(s):
        raise PrivacyRequired("LOGIN is only allowed over TLS: use STARTTLS first")
    return await _password(s, "LOGIN", cmd.username, cmd.password, None)


async def _sasl_response(s: Session, initial: bytes | None) -> bytes:
    if initial is not None:
        return initial
    s.emit(r.continuation(""))
    line = await s.read_line()
    if line is None:
        raise Closing
    if not isinstance(line, bytes):
        raise ClientBug("Line too long")
    value = parse_sasl_response(line)
    if isinstance(value, SaslCancelled):
        raise ClientBug("AUTHENTICATE cancelled")
    if value is None:
        raise ClientBug("Invalid base64 in the SASL response")
    return value


async def h_authenticate(s: Session, cmd: c.Authenticate) -> Result:
    if not _secure(s):
        raise PrivacyRequired("Authentication is only allowed over TLS: use STARTTLS first")
    if cmd.mechanism == "PLAIN":
        # RFC 4616: authzid NUL authcid NUL passwd
        data = await _sasl_response(s, cmd.initial_response)
        parts = data.split(b"\0")
        if len(parts) != 3:
            raise ClientBug("Malformed PLAIN response")
        try:
            authzid, login, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            raise ClientBug("PLAIN response is not UTF-8") from None
        # Clients such as mbsync repeat the login as authzid: that asks for nothing more.
        return await _password(
            s, "PLAIN", login, password, None if authzid == login else authzid or None
        )
    if cmd.mechanism == "EXTERNAL":
        data = await _sasl_response(s, cmd.initial_response)
        ext_authzid = data.decode("utf-8", "replace") or None
        cert = peer_from_ssl_object(s.writer.get_extra_info("ssl_object"))
        try:
            if cert is None:
                raise AuthenticationFailed(
                    "EXTERNAL needs a client certificate", log_detail="no certificate"
                )
            s.runtime.authenticator.check_not_locked(s.peer, None)
            principal = s.runtime.authenticator.certificate(cert.fingerprint_sha256, ext_authzid)
        except (AuthenticationFailed, PermissionDenied, TemporarilyLocked) as exc:
            await asyncio.sleep(s.runtime.authenticator.record_failure(s.peer, None))
            await _auth_failed(s, "EXTERNAL", None, exc)
            raise AssertionError("unreachable") from None
        return await _auth_ok(s, principal, "EXTERNAL", principal.person.login)
    raise Cannot("Unsupported authentication mechanism")


# -------------------------------------------------------------- authenticated (§6.3)


async def h_enable(s: Session, cmd: c.Enable) -> Result:
    # RFC 5161; CONDSTORE is the only extension with something to enable here.
    newly = [x for x in cmd.capabilities if x == "CONDSTORE" and x not in s.enabled]
    s.enabled.update(newly)
    s.emit(r.untagged("ENABLED" + "".join(" " + x for x in newly)))
    return "ENABLE completed", None


async def h_namespace(s: Session, cmd: c.Namespace) -> Result:
    v = view(s)
    personal = b'(("" "/"))' if v.personal else b"NIL"
    shared = b'(("' + names.SHARED_PREFIX.encode() + b'" "/"))' if v.shared else b"NIL"
    s.emit(r.untagged(b"NAMESPACE " + personal + b" " + shared + b" NIL"))
    return "NAMESPACE completed", None


async def _select(s: Session, cmd: c.Select | c.Examine) -> Result:
    assert s.principal is not None
    read_only = isinstance(cmd, c.Examine)
    s.deselect(Event.SELECT_FAILED)  # RFC 3501 §6.3.1: a failed SELECT leaves none
    target = target_of(s, cmd.mailbox)
    need(s, target, "r", "read messages")
    person = seen_person(s, target.box)
    try:
        folder, flagged = await s.service.mail.snapshot(target.box, target.folder, person)
    except FolderMissing:
        raise NoSuchMailbox("No such mailbox") from None
    have = rights(s, target)
    if not any(ch in have for ch in "swte"):
        read_only = True  # RFC 4314 §4: nothing it could change
    if traced(s, target.box):
        await record(
            s,
            ImapSelected(
                **who(s, target.box, f"{cmd.name} {names.display(target, view(s))}"),
                folder=target.folder,
                read_only=read_only,
                messages=len(flagged),
                answer="OK",
            ),
        )
    sel = Selected(
        target=target,
        name=names.display(target, view(s)),
        folder=folder,
        read_only=read_only,
        seen_person=person,
        uids=[f.uid for f in flagged],
        flags={f.uid: f for f in flagged},
        highestmodseq=folder.highestmodseq,
    )
    s.select(sel)
    if cmd.condstore:
        s.enabled.add("CONDSTORE")
    permanent = [f for f, ch in (("\\Seen", "s"), ("\\Deleted", "t")) if ch in have]
    if "w" in have:
        permanent += ["\\Answered", "\\Flagged", "\\Draft"]
    s.emit(r.untagged(b"FLAGS " + r.flag_list(SYSTEM_FLAGS)))
    s.emit(r.untagged(b"%d EXISTS" % len(sel.uids)))
    s.emit(r.untagged(b"0 RECENT"))
    first_unseen = next(
        (i + 1 for i, u in enumerate(sel.uids) if SEEN not in sel.flags[u].flags), 0
    )
    if first_unseen:
        s.emit(r.untagged_status(r.Status.OK, "First unseen", r.unseen(first_unseen)))
    s.emit(r.untagged_status(r.Status.OK, "UIDs valid", r.uidvalidity(folder.uidvalidity)))
    s.emit(r.untagged_status(r.Status.OK, "Predicted next UID", r.uidnext(folder.uidnext)))
    s.emit(
        r.untagged_status(
            r.Status.OK,
            "Limited" if read_only else "Flags permitted",
            r.permanentflags(
                [] if read_only else permanent, keywords=not read_only and "w" in have
            ),
        )
    )
    s.emit(r.untagged_status(r.Status.OK, "Highest", r.highestmodseq(folder.highestmodseq)))
    code = r.ResponseCode.READ_ONLY if read_only else r.ResponseCode.READ_WRITE
    return f"{cmd.name} completed", code


async def h_select(s: Session, cmd: c.Select | c.Examine) -> Result:
    return await _select(s, cmd)


def _new_folder_name(s: Session, raw: str) -> Target:
    name = mailbox_name(raw).rstrip("/")
    target = names.resolve(name, view(s))
    if target is None or not target.folder or "//" in name:
        raise Cannot("Folders can only be created inside a box you hold")
    return target


async def h_create(s: Session, cmd: c.Create) -> Result:
    target = _new_folder_name(s, cmd.mailbox)
    need(s, target, "k", "create folders")
    special = cmd.special_use[0] if cmd.special_use else None
    try:
        await s.service.mail.create_folder(
            target.box,
            target.folder,
            special,
            ImapFolderChanged(
                **who(s, target.box, f"CREATE {cmd.mailbox}"),
                operation="create",
                folder=target.folder,
            ),
        )
    except FolderExists:
        raise AlreadyExists("Mailbox already exists") from None
    return "CREATE completed", None


async def h_delete(s: Session, cmd: c.Delete) -> Result:
    target = await existing(s, cmd.mailbox)
    need(s, target, "x", "delete folders")
    if target.folder == "INBOX":
        raise Cannot("INBOX cannot be deleted")
    folders = await s.service.mail.folders([target.box])
    if names.has_children(target.folder, (f.name for f in folders)):
        raise ImapError("Delete the folders inside it first")
    if s.selected is not None and s.selected.target == target:
        s.deselect()
    await s.service.mail.delete_folder(
        target.box,
        target.folder,
        ImapFolderChanged(
            **who(s, target.box, f"DELETE {cmd.mailbox}"), operation="delete", folder=target.folder
        ),
    )
    return "DELETE completed", None


async def h_rename(s: Session, cmd: c.Rename) -> Result:
    source = await existing(s, cmd.source)
    dest = _new_folder_name(s, cmd.destination)
    if dest.box != source.box:
        raise Cannot("Folders can only be renamed within the same box")
    if source.folder == "INBOX":
        raise Cannot("INBOX cannot be renamed")
    need(s, source, "x", "rename folders")
    need(s, dest, "k", "create folders")
    try:
        await s.service.mail.rename_folder(
            source.box,
            source.folder,
            dest.folder,
            ImapFolderChanged(
                **who(s, source.box, f"RENAME {cmd.source} {cmd.destination}"),
                operation="rename",
                folder=source.folder,
                new_name=dest.folder,
            ),
        )
    except FolderExists:
        raise AlreadyExists("Mailbox already exists") from None
    return "RENAME completed", None


async def h_subscribe(s: Session, cmd: c.Subscribe | c.Unsubscribe) -> Result:
    assert s.principal is not None
    target = target_of(s, cmd.mailbox)
    await s.service.mail.subscribe(
        s.principal.person_id, target.box, target.folder, isinstance(cmd, c.Subscribe)
    )
    return f"{cmd.name} completed", None


async def _visible(s: Session) -> list[tuple[str, Target | None, str | None]]:
    """Every name the person can LIST: (name, target or None for a node, special-use)."""
    v = view(s)
    out: list[tuple[str, Target | None, str | None]] = []
    for f in await s.service.mail.folders(list(v.boxes())):
        t = Target(f.box, f.name)
        if "l" in rights(s, t):
            out.append((names.display(t, v), t, f.special_use))
    out += [(n, None, None) for n in names.hierarchy_nodes(v)]
    out.sort(key=lambda x: (x[0] != "INBOX", x[0]))
    return out


async def h_list(s: Session, cmd: c.List | c.Lsub) -> Result:
    assert s.principal is not None
    lsub = isinstance(cmd, c.Lsub)
    patterns = (cmd.pattern,) if isinstance(cmd, c.Lsub) else cmd.patterns
    if not lsub and len(patterns) == 1 and patterns[0] == "":
        # RFC 3501 §6.3.8: the delimiter and the root of the reference.
        s.emit(r.untagged(b'LIST (\\Noselect) "/" ""'))
        return "LIST completed", None
    selection = frozenset() if isinstance(cmd, c.Lsub) else cmd.selection
    returns = frozenset() if isinstance(cmd, c.Lsub) else cmd.return_options
    want_subscribed = lsub or c.ListSelect.SUBSCRIBED in selection
    subscribed: set[tuple[str, str]] = set()
    if want_subscribed or c.ListReturn.SUBSCRIBED in returns:
        subscribed = await s.service.mail.subscriptions(s.principal.person_id)
    special_only = c.ListSelect.SPECIAL_USE in selection
    regexes = [names.pattern(cmd.reference, p) for p in patterns]
    visible = await _visible(s)
    all_names = [n for n, _, _ in visible]
    verb = b"LSUB" if lsub else b"LIST"
    for name, target, special in visible:
        if not any(rx.fullmatch(name) for rx in regexes):
            continue
        is_sub = target is not None and (target.box, target.folder) in subscribed
        if want_subscribed and not is_sub:
            continue
        if special_only and special is None:
            continue
        attrs: list[str] = []
        if target is None:
            attrs.append("\\Noselect")
        if not lsub:
            attrs.append(
                "\\HasChildren" if names.has_children(name, all_names) else "\\HasNoChildren"
            )
            if special:
                attrs.append(special)
            if is_sub and (want_subscribed or c.ListReturn.SUBSCRIBED in returns):
                attrs.append("\\Subscribed")
        s.emit(r.untagged(verb + b" " + r.flag_list(attrs) + b' "/" ' + r.quoted(name)))
        if (
            isinstance(cmd, c.List)
            and cmd.return_status is not None
            and target is not None
            and "r" in rights(s, target)
        ):
            await _emit_status(s, name, target, cmd.return_status)
    return f"{verb.decode()} completed", None


async def _emit_status(
    s: Session, name: str, target: Target, attrs: Iterable[c.StatusAttr]
) -> None:
    folder = await s.service.mail.folder(target.box, target.folder)
    if folder is None:
        raise NoSuchMailbox("No such mailbox")
    st = await s.service.mail.status(folder.id, seen_person(s, target.box))
    values = {
        c.StatusAttr.MESSAGES: st.messages,
        c.StatusAttr.RECENT: 0,
        c.StatusAttr.UIDNEXT: st.uidnext,
        c.StatusAttr.UIDVALIDITY: st.uidvalidity,
        c.StatusAttr.UNSEEN: st.unseen,
        c.StatusAttr.HIGHESTMODSEQ: st.highestmodseq,
        c.StatusAttr.SIZE: st.size,
    }
    items = " ".join(f"{a.value} {values[a]}" for a in attrs)
    s.emit(r.untagged(b"STATUS " + r.quoted(name) + b" (" + items.encode() + b")"))


async def h_status(s: Session, cmd: c.Status) -> Result:
    target = await existing(s, cmd.mailbox)
    need(s, target, "r", "read messages")
    await _emit_status(s, names.display(target, view(s)), target, cmd.attributes)
    return "STATUS completed", None


async def h_append(s: Session, cmd: c.Append) -> Result:
    target = await existing(s, cmd.mailbox, trycreate=True)
    need(s, target, "i", "add messages")
    have = rights(s, target)
    # RFC 4314 §4: flags the person may not set are dropped, not refused.
    allowed_flags = {
        f
        for f in cmd.flags
        if (f == SEEN and "s" in have)
        or (f == DELETED and "t" in have)
        or (f not in (SEEN, DELETED) and "w" in have)
    }
    meta: MessageMeta = await asyncio.to_thread(analyse, cmd.message)
    when = cmd.internal_date or dt.datetime.now(dt.UTC)
    traced_box = traced(s, target.box)

    def event(uid: int) -> AuditEvent | None:
        if not traced_box:
            return None
        return ImapAppended(
            **who(s, target.box, f"APPEND {cmd.mailbox}"),
            folder=target.folder,
            uid=uid,
            message_id=meta.message_id,
            size_bytes=len(cmd.message),
            answer="OK",
        )

    uidvalidity, uid = await s.service.mail.append(
        target.box,
        target.folder,
        cmd.message,
        meta,
        frozenset(allowed_flags),
        when,
        person=seen_person(s, target.box),
        make_event=event,
    )
    return "APPEND completed", r.appenduid(uidvalidity, [uid])


async def h_idle(s: Session, cmd: c.Idle) -> Result:
    """RFC 2177: push EXISTS / EXPUNGE / FETCH as they happen until ``DONE``."""
    s.emit(r.continuation("idling"))
    await s.refresh(allow_expunge=True)
    timeout = float(s.runtime.config.limits.imap_idle_timeout_seconds)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        line = s.reader.read_line()
        if line is not None:
            if isinstance(line, bytes) and is_idle_done(line):
                s.emit(r.tagged(cmd.tag, r.Status.OK, "IDLE terminated"))
                return None
            s.emit(r.tagged(cmd.tag, r.Status.BAD, "Expected DONE"))
            s._count_bad()
            return None
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError
        data = await s.receive(remaining, wake_on_notify=True)
        if data is None:
            raise Closing
        if data:
            s.reader.feed(data)
        await s.refresh(allow_expunge=True)


# ----------------------------------------------------------------------- ACL (RFC 4314)


async def h_myrights(s: Session, cmd: c.MyRights) -> Result:
    target = target_of(s, cmd.mailbox)
    s.emit(
        r.untagged(
            b"MYRIGHTS "
            + r.quoted(cmd.mailbox)
            + b" "
            + acl.with_obsolete(rights(s, target)).encode()
        )
    )
    return "MYRIGHTS completed", None


async def h_getacl(s: Session, cmd: c.GetAcl) -> Result:
    target = target_of(s, cmd.mailbox)
    need(s, target, "a", "read the access list")
    box = s.runtime.config.mailbox(target.box)
    assert box is not None
    entries = acl.acl_entries(box, target.folder, today(s))
    body = b"".join(b" " + r.astring(i) + b" " + x.encode() for i, x in entries)
    s.emit(r.untagged(b"ACL " + r.quoted(cmd.mailbox) + body))
    return "GETACL completed", None


async def h_listrights(s: Session, cmd: c.ListRights) -> Result:
    target = target_of(s, cmd.mailbox)
    need(s, target, "a", "read the access list")
    groups = " ".join(acl.RIGHT_GROUPS)
    s.emit(
        r.untagged(
            b"LISTRIGHTS "
            + r.quoted(cmd.mailbox)
            + b" "
            + r.astring(cmd.identifier)
            + b' "" '
            + groups.encode()
        )
    )
    return "LISTRIGHTS completed", None


async def h_setacl(s: Session, cmd: c.SetAcl | c.DeleteAcl) -> Result:
    raise Cannot(
        "Rights are managed in the mss-relay configuration file, not over IMAP: "
        "ask the administrator"
    )


# --------------------------------------------------------------------- selected (§6.4)


def _writable(s: Session) -> Selected:
    sel = selected(s)
    if sel.read_only:
        raise Cannot("The mailbox is read-only (EXAMINE or no right to change it)")
    return sel


async def h_close(s: Session, cmd: c.Close | c.Unselect) -> Result:
    sel = selected(s)
    if isinstance(cmd, c.Close) and not sel.read_only and "e" in rights(s, sel.target):
        # RFC 3501 §6.4.2: expunge silently, no untagged EXPUNGE.
        await _expunge(s, sel, None, f"CLOSE ({sel.name})")
    s.deselect()
    return f"{cmd.name} completed", None


async def _expunge(
    s: Session, sel: Selected, uids: list[int] | None, request: str
) -> list[tuple[int, str | None]]:
    box = sel.target.box
    traced_box = traced(s, box)

    def event(gone: tuple[int, ...], mids: tuple[str, ...]) -> AuditEvent | None:
        if not traced_box:
            return None
        return ImapExpunged(
            **who(s, box, request),
            folder=sel.target.folder,
            uids=gone,
            message_ids=mids,
            answer="OK",
        )

    return await s.service.mail.expunge(sel.folder.id, uids, event)


async def h_expunge(s: Session, cmd: c.Expunge) -> Result:
    sel = _writable(s)
    need(s, sel.target, "e", "expunge messages")
    uids: list[int] | None = None
    if cmd.uids is not None:
        uids = [u for u in sel.uids if cmd.uids.contains(u, sel.largest_uid)]
    gone = await _expunge(s, sel, uids, f"{'UID ' if uids is not None else ''}EXPUNGE ({sel.name})")
    for uid, _ in gone:
        s.forget(uid)
    return f"{'UID ' if cmd.uids is not None else ''}EXPUNGE completed", None


def _members(sel: Selected, seqset: c.SequenceSet, uid: bool) -> list[int]:
    """The UIDs a sequence set names, ascending (RFC 3501 §6.4.8 for UID sets)."""
    if seqset.saved:
        return []
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


_ROW_ITEMS = frozenset(
    {
        c.FetchItem.INTERNALDATE,
        c.FetchItem.RFC822_SIZE,
        c.FetchItem.ENVELOPE,
        c.FetchItem.BODY,
        c.FetchItem.BODYSTRUCTURE,
        c.FetchItem.BODY_SECTION,
        c.FetchItem.BINARY,
        c.FetchItem.BINARY_SIZE,
        c.FetchItem.RFC822,
        c.FetchItem.RFC822_HEADER,
        c.FetchItem.RFC822_TEXT,
    }
)
_META_ITEMS = _ROW_ITEMS - {c.FetchItem.INTERNALDATE, c.FetchItem.RFC822_SIZE}
_RAW_ITEMS = frozenset(
    {
        c.FetchItem.BODY_SECTION,
        c.FetchItem.BINARY,
        c.FetchItem.BINARY_SIZE,
        c.FetchItem.RFC822,
        c.FetchItem.RFC822_HEADER,
        c.FetchItem.RFC822_TEXT,
    }
)


def _sets_seen(a: c.FetchAttr) -> bool:
    """RFC 3501 §6.4.5: BODY[...], BINARY[...], RFC822 and RFC822.TEXT set \\Seen."""
    if a.item in (c.FetchItem.BODY_SECTION, c.FetchItem.BINARY):
        return not a.peek
    return a.item in (c.FetchItem.RFC822, c.FetchItem.RFC822_TEXT)


def _section_data(a: c.FetchAttr, raw: bytes, meta: MessageMeta) -> bytes | None:
    sec = a.section or c.Section()
    if sec.parts and not part_exists(meta, sec.parts):
        return None
    kind = sec.text.value if sec.text is not None else ""
    return section(raw, meta, sec.parts, kind, sec.header_fields)


def _literal(data: bytes, binary: bool = False) -> bytes:
    if binary and b"\0" in data:
        return b"~{%d}\r\n" % len(data) + data  # RFC 3516 literal8
    return b"{%d}\r\n" % len(data) + data


def _render(
    a: c.FetchAttr,
    uid: int,
    f: Flagged,
    row: MessageRow | None,
    meta: MessageMeta | None,
    raw: bytes | None,
) -> bytes:
    item = a.item
    if item is c.FetchItem.FLAGS:
        return b"FLAGS " + r.flag_list(sorted(f.flags))
    if item is c.FetchItem.UID:
        return b"UID %d" % uid
    if item is c.FetchItem.MODSEQ:
        return b"MODSEQ (%d)" % f.modseq
    assert row is not None
    if item is c.FetchItem.INTERNALDATE:
        return b"INTERNALDATE " + r.date_time(row.internal_date).encode()
    if item is c.FetchItem.RFC822_SIZE:
        return b"RFC822.SIZE %d" % row.size
    assert meta is not None
    if item is c.FetchItem.ENVELOPE:
        return b"ENVELOPE " + envelope(meta)
    if item is c.FetchItem.BODYSTRUCTURE:
        return b"BODYSTRUCTURE " + bodystructure(meta, True)
    if item is c.FetchItem.BODY:
        return b"BODY " + bodystructure(meta, False)
    assert raw is not None
    if item is c.FetchItem.RFC822:
        return b"RFC822 " + _literal(raw)
    if item is c.FetchItem.RFC822_HEADER:
        return b"RFC822.HEADER " + _literal(section(raw, meta, (), "HEADER"))
    if item is c.FetchItem.RFC822_TEXT:
        return b"RFC822.TEXT " + _literal(section(raw, meta, (), "TEXT"))
    name = r.fetch_item_name(a).encode()
    if item is c.FetchItem.BODY_SECTION:
        data = _section_data(a, raw, meta)
        if data is None:
            return name + b" NIL"
        if a.partial is not None:
            data = partial(data, a.partial.offset, a.partial.length)
        return name + b" " + _literal(data)
    parts = a.section.parts if a.section is not None else ()
    if parts and not part_exists(meta, parts):
        return name + (b" 0" if item is c.FetchItem.BINARY_SIZE else b" NIL")
    decoded = binary_section(raw, meta, parts)
    if decoded is None:
        raise UnknownCte("Unknown Content-Transfer-Encoding")
    if item is c.FetchItem.BINARY_SIZE:
        return name + b" %d" % len(decoded)
    if a.partial is not None:
        decoded = partial(decoded, a.partial.offset, a.partial.length)
    return name + b" " + _literal(decoded, binary=True)


async def h_fetch(s: Session, cmd: c.Fetch) -> Result:
    sel = selected(s)
    need(s, sel.target, "r", "read messages")
    uids = _members(sel, cmd.sequence_set, cmd.uid)
    attrs = list(cmd.attributes)
    kinds = {a.item for a in attrs}
    if cmd.uid and c.FetchItem.UID not in kinds:
        attrs.insert(0, c.FetchAttr(c.FetchItem.UID))  # RFC 3501 §6.4.8
    if cmd.changed_since is not None:
        s.enabled.add("CONDSTORE")
        uids = [u for u in uids if sel.flags[u].modseq > cmd.changed_since]
        if c.FetchItem.MODSEQ not in kinds:
            attrs.append(c.FetchAttr(c.FetchItem.MODSEQ))
    if not uids:
        return f"{'UID ' if cmd.uid else ''}FETCH completed", None
    content = [a for a in attrs if a.item in _RAW_ITEMS]
    # Implicit \Seen (RFC 3501 §6.4.5), only where the person may set it.
    if any(_sets_seen(a) for a in attrs) and not sel.read_only and "s" in rights(s, sel.target):
        unseen = [u for u in uids if SEEN not in sel.flags[u].flags]
        if unseen:
            res = await s.service.mail.store_flags(
                sel.folder.id, unseen, "+FLAGS", frozenset({SEEN}), person=sel.seen_person
            )
            for f in res.changed:
                sel.flags[f.uid] = f
            if c.FetchItem.FLAGS not in kinds:
                attrs.append(c.FetchAttr(c.FetchItem.FLAGS))
    rows: dict[int, MessageRow] = {}
    metas: dict[str, MessageMeta] = {}
    raws: dict[str, bytes] = {}
    small = len(uids) <= RAW_BATCH
    if kinds & _ROW_ITEMS:
        # One query for rows, metadata and (for a few messages) the bytes.
        rows, metas, raws = await s.service.mail.fetch_data(
            sel.folder.id,
            uids,
            meta=bool(kinds & _META_ITEMS),
            raw=bool(content) and small,
        )
    if content and traced(s, sel.target.box):
        present = [u for u in uids if u in rows]
        await record(
            s,
            ImapFetched(
                **who(s, sel.target.box, f"{'UID ' if cmd.uid else ''}FETCH ({sel.name})"),
                folder=sel.target.folder,
                uids=tuple(present),
                message_ids=tuple(m for u in present if (m := rows[u].message_id)),
                items=tuple(dict.fromkeys(r.fetch_item_name(a) for a in content)),
                answer="OK",
            ),
        )
    step = RAW_BATCH if content else len(uids)
    for start in range(0, len(uids), step):
        batch = uids[start : start + step]
        if content and not small:
            raws = await s.service.mail.raws(rows[u].blob_id for u in batch if u in rows)
        for uid in batch:
            row = rows.get(uid)
            if kinds & _ROW_ITEMS and row is None:
                continue  # expunged by another session; its EXPUNGE comes later
            meta = metas.get(row.blob_id) if row is not None else None
            raw = raws.get(row.blob_id) if row is not None else None
            f = sel.flags[uid]
            body = b" ".join(_render(a, uid, f, row, meta, raw) for a in attrs)
            s.emit(b"* %d FETCH (" % sel.seq_of(uid) + body + b")\r\n")
        await s.flush_if_large()
    return f"{'UID ' if cmd.uid else ''}FETCH completed", None


def _store_rights(cmd: c.Store, have: str) -> tuple[str, frozenset[str]]:
    """Rights STORE needs (RFC 4314 §4), and flags the person may not clear with a
    FLAGS replacement (kept as they are)."""
    needed = set()
    for f in cmd.flags:
        needed.add("s" if f == SEEN else "t" if f == DELETED else "w")
    keep: set[str] = set()
    if cmd.mode is c.StoreMode.REPLACE:
        if "s" not in have:
            keep.add(SEEN)
        if "t" not in have:
            keep.add(DELETED)
        if "w" not in have:
            needed.add("w")
    return "".join(sorted(needed)), frozenset(keep)


async def h_store(s: Session, cmd: c.Store) -> Result:
    sel = _writable(s)
    have = rights(s, sel.target)
    needed, keep = _store_rights(cmd, have)
    what = "set \\Deleted" if "t" in needed else "change flags"
    need(s, sel.target, needed, what)
    uids = _members(sel, cmd.sequence_set, cmd.uid)
    flags = frozenset(cmd.flags)
    if keep:
        flags = flags - keep
    event: AuditEvent | None = None
    if traced(s, sel.target.box) and uids:
        event = ImapFlagsChanged(
            **who(s, sel.target.box, f"{'UID ' if cmd.uid else ''}STORE ({sel.name})"),
            folder=sel.target.folder,
            uids=tuple(uids),
            mode=cmd.mode.value,
            flags=tuple(cmd.flags),
            answer="OK",
        )
    res = await s.service.mail.store_flags(
        sel.folder.id,
        uids,
        cmd.mode.value,
        flags,
        person=sel.seen_person,
        unchanged_since=cmd.unchanged_since,
        event=event,
        keep=keep,
    )
    for f in res.changed:
        sel.flags[f.uid] = f
    if not cmd.silent or cmd.unchanged_since is not None:
        condstore = "CONDSTORE" in s.enabled or cmd.unchanged_since is not None
        modified = set(res.modified)
        for uid in uids:
            if uid in modified or uid not in sel.flags:
                continue
            f = sel.flags[uid]
            items = [] if cmd.silent else [b"FLAGS " + r.flag_list(sorted(f.flags))]
            if cmd.uid:
                items.append(b"UID %d" % uid)
            if condstore:
                items.append(b"MODSEQ (%d)" % f.modseq)
            if cmd.silent and not condstore:
                continue
            s.emit(b"* %d FETCH " % sel.seq_of(uid) + r.paren(items) + b"\r\n")
    code: r.Code | None = None
    if res.modified:
        code = r.modified(
            sorted(res.modified) if cmd.uid else sorted(sel.seq_of(u) for u in res.modified)
        )
    return f"{'UID ' if cmd.uid else ''}STORE completed", code


async def h_copy(s: Session, cmd: c.Copy | c.Move) -> Result:
    sel = selected(s)
    move = isinstance(cmd, c.Move)
    need(s, sel.target, "r", "read messages")
    if move:
        _writable(s)
        need(s, sel.target, "te", "move messages out (delete)")
    dest = await existing(s, cmd.mailbox, trycreate=True)
    need(s, dest, "i", "add messages")
    uids = _members(sel, cmd.sequence_set, cmd.uid)
    verb = f"{'UID ' if cmd.uid else ''}{cmd.name}"
    if not uids:
        return f"{verb} completed", None
    dest_folder = await s.service.mail.folder(dest.box, dest.folder)
    if dest_folder is None:
        raise TryCreate("No such mailbox")
    traced_any = traced(s, sel.target.box) or traced(s, dest.box)

    def event(src: tuple[int, ...], mids: tuple[str, ...]) -> AuditEvent | None:
        if not traced_any:
            return None
        return ImapCopied(
            **who(s, sel.target.box, f"{verb} {cmd.mailbox} ({sel.name})"),
            folder=sel.target.folder,
            target_box=dest.box,
            target_folder=dest.folder,
            uids=src,
            message_ids=mids,
            moved=move,
            answer="OK",
        )

    res = await s.service.mail.copy(
        sel.folder.id,
        uids,
        dest_folder.id,
        source_person=sel.seen_person,
        dest_person=seen_person(s, dest.box),
        move=move,
        make_event=event,
    )
    if not res.source_uids:
        return f"{verb} completed", None
    code = r.copyuid(res.uidvalidity, res.source_uids, res.dest_uids)
    if move:
        # RFC 6851 §4.3: COPYUID in an untagged OK before the EXPUNGEs.
        s.emit(r.untagged_status(r.Status.OK, "Moved", code))
        for uid in res.source_uids:
            s.forget(uid)
        return f"{verb} completed", None
    return f"{verb} completed", code


HANDLERS: dict[type[c.Command], Handler] = {
    c.Capability: h_capability,
    c.Noop: h_noop,
    c.Logout: h_logout,
    c.Id: h_id,
    c.StartTls: h_starttls,
    c.Login: h_login,
    c.Authenticate: h_authenticate,
    c.Enable: h_enable,
    c.Namespace: h_namespace,
    c.Select: h_select,
    c.Examine: h_select,
    c.Create: h_create,
    c.Delete: h_delete,
    c.Rename: h_rename,
    c.Subscribe: h_subscribe,
    c.Unsubscribe: h_subscribe,
    c.List: h_list,
    c.Lsub: h_list,
    c.Status: h_status,
    c.Append: h_append,
    c.Idle: h_idle,
    c.MyRights: h_myrights,
    c.GetAcl: h_getacl,
    c.ListRights: h_listrights,
    c.SetAcl: h_setacl,
    c.DeleteAcl: h_setacl,
    c.Check: h_noop,
    c.Close: h_close,
    c.Unselect: h_close,
    c.Expunge: h_expunge,
    c.Search: h_search,
    c.Fetch: h_fetch,
    c.Store: h_store,
    c.Copy: h_copy,
    c.Move: h_copy,
}
