"""One IMAP connection: reads bytes, frames commands, gates them by state, dispatches,
writes what the handlers produced, and keeps the selected folder's snapshot current.

The session is the only place that writes to the socket. Handlers append responses to
`out` (`emit`); the session flushes before it waits for input, so pipelined commands
are answered in one write. Errors are mapped to responses in `_run_command` only:
a `ProtocolError` gives its NO/BAD with its response code and its own (chosen) text;
anything else gives ``NO [SERVERBUG]`` with a reference that is logged with the
traceback — exception text never reaches the client (STYLE.md §4).

Snapshot: after SELECT the session holds every message's UID, MODSEQ and flags in
memory. Commits that touch the folder (this process: `Store.on_commit`) mark it dirty;
before each tagged response, and at once while IDLE, the session asks the service what
changed since its MODSEQ (one read per folder and commit, shared by the folder's
sessions) and sends EXISTS / EXPUNGE / FETCH (RFC 3501 §7.3.1, §7.4.1; EXPUNGE is held
back during FETCH, STORE and SEARCH, RFC 3501 §7.4.1).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import secrets
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from relay.audit.events import ImapRefusalsSuppressed, ImapRefused
from relay.audit.limiter import WindowLimiter
from relay.errors import PermissionDenied, ProtocolError
from relay.identity.auth import Principal
from relay.imap import commands as c
from relay.imap import response as r
from relay.imap import rev2
from relay.imap.context import SearchContext
from relay.imap.flags import RECENT, MailboxFlags, shown
from relay.imap.names import Target
from relay.imap.notify import NotifySpec, Watched
from relay.imap.parser import CommandReader, NeedContinuation, NeedData, ParseFailure
from relay.imap.state import Event, State, allowed, transition
from relay.metrics import CommandResult
from relay.store.mailstore import Flagged, FolderInfo, FolderMissing, MessageRow

if TYPE_CHECKING:
    from relay.imap.server import ImapService

log = structlog.get_logger("relay.imap")

READ_CHUNK = 65536
FLUSH_AT = 256 * 1024  # write out once this much is buffered


@dataclass
class Selected:
    """The selected folder: its identity and the session's view of its messages."""

    target: Target
    name: str  # as the client named it (display form)
    folder: FolderInfo
    read_only: bool
    seen_person: str | None  # person id when \Seen is per person on this box
    uids: list[int]
    flags: dict[int, Flagged]
    highestmodseq: int
    mailbox_flags: MailboxFlags  # what FLAGS / PERMANENTFLAGS have announced
    recent: set[int] = field(default_factory=set)  # \Recent for this session (§2.3.2)
    # False in an IMAP4rev2 session: the messages it takes as recent (so that no other
    # session shows them so, RFC 3501 §2.3.2) are never shown \Recent (RFC 9051
    # Appendix E item 12).
    show_recent: bool = True
    dirty: bool = False
    # Removed by another session, not told yet (held back during FETCH, STORE and
    # SEARCH, RFC 3501 §7.4.1): UID -> MODSEQ of the removal.
    pending_expunge: dict[int, int] = field(default_factory=dict)
    saved: list[int] = field(default_factory=list)  # RFC 5182 "$": UIDs
    contexts: list[SearchContext] = field(default_factory=list)  # RFC 5267 UPDATE
    # Message rows already read (blob, size, dates): a UID's row never changes while
    # the folder is selected, so SORT and THREAD read each once (relay.imap.handlers.sort).
    rows: dict[int, MessageRow] = field(default_factory=dict)
    # The last SORT orders and THREAD answers, by what they were computed from (the
    # criteria and the exact messages): asked again on an unchanged folder, they are
    # answered without sorting again (a few entries; see relay.imap.handlers.sort).
    sort_memo: dict[tuple[object, ...], list[int]] = field(default_factory=dict)
    thread_memo: dict[tuple[object, ...], str] = field(default_factory=dict)
    # The UIDs of each distinct flag set (a folder has few), from the folder's index at
    # SELECT (or built at the first search on flags alone) and kept current by
    # `set_flags` / `drop`: ``UID SEARCH UNSEEN`` on 100,000 messages then looks at a
    # few sets, not at every message.
    by_flags: dict[frozenset[str], set[int]] | None = None

    def seq_of(self, uid: int) -> int:
        """The message number of `uid` (1-based); the UID must be in the snapshot."""
        return bisect.bisect_left(self.uids, uid) + 1

    def seqs_of(self, uids: list[int], *, ascending: bool) -> list[int]:
        """The message numbers of `uids`, all in the snapshot, in their order.

        Many ascending UIDs (a search's answer) are numbered in one pass over the
        snapshot that runs in C, not with a binary search each: 3 ms rather than 25
        for 50,000 of 100,000."""
        every = self.uids
        if not ascending or len(uids) * 8 < len(every):
            return [bisect.bisect_left(every, u) + 1 for u in uids]
        return list(itertools.compress(itertools.count(1), map(set(uids).__contains__, every)))

    def flags_of(self, uid: int) -> frozenset[str]:
        """The flags of `uid` as this session sees them, ``\\Recent`` included."""
        flags = self.flags[uid].flags
        return flags | {RECENT} if self.is_recent(uid) else flags

    def is_recent(self, uid: int) -> bool:
        return self.show_recent and uid in self.recent

    def flag_list(self, uid: int) -> bytes:
        """``(\\Recent \\Seen $Forwarded)``: the flags a FETCH response gives `uid`."""
        return shown(self.flags[uid].flags, recent=self.is_recent(uid))

    @property
    def largest_uid(self) -> int:
        return self.uids[-1] if self.uids else 0

    def set_flags(self, f: Flagged) -> None:
        """A message's new (or first) state."""
        old = self.flags.get(f.uid)
        self.flags[f.uid] = f
        if self.by_flags is not None:
            if old is not None and old.flags is not f.flags:
                self.by_flags.get(old.flags, set()).discard(f.uid)
            self.by_flags.setdefault(f.flags, set()).add(f.uid)

    def drop(self, uid: int) -> None:
        """A message is gone from the snapshot's flags (its number is the caller's)."""
        old = self.flags.pop(uid)
        if self.by_flags is not None:
            self.by_flags.get(old.flags, set()).discard(uid)

    def flag_sets(self) -> dict[frozenset[str], set[int]]:
        """The UIDs of each distinct flag set (\\Recent aside), built on first use."""
        if self.by_flags is None:
            self.by_flags = {}
            for uid, f in self.flags.items():
                self.by_flags.setdefault(f.flags, set()).add(uid)
        return self.by_flags


def describe(cmd: c.Command, selected: str | None) -> str:
    """The request as the audit trail records it: the command, its flags and folder, never
    a message or a sequence set (which may be long)."""
    uid = getattr(cmd, "uid", False) or (isinstance(cmd, c.Expunge) and cmd.uids is not None)
    parts = [("UID " if uid else "") + cmd.name]
    if isinstance(cmd, c.Store):
        parts.append(f"{cmd.mode.value} ({' '.join(cmd.flags)})")
    mailbox = getattr(cmd, "mailbox", None)
    if isinstance(mailbox, str):
        parts.append(mailbox)
    if selected is not None:
        parts.append(f"(in {selected})")
    return " ".join(parts)


# Commands whose missing folder is a destination (RFC 3501 §6.3.11, §6.4.7: TRYCREATE).
_DESTINATIONS = (c.Append, c.AppendMany, c.Copy, c.Move)


class Closing(Exception):
    """End the session after sending what is buffered (BYE already emitted)."""


class LoginTimeout(TimeoutError):
    """The total time to authenticate is over."""


class Session:
    """One client connection."""

    def __init__(
        self,
        service: ImapService,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        tls_active: bool,
    ) -> None:
        self.service = service
        self.runtime = service.runtime
        self.stream = reader
        self.writer = writer
        self.tls_active = tls_active
        peer = writer.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        limits = self.runtime.config.limits
        self.reader = CommandReader(
            max_line_bytes=limits.imap_max_line_bytes,
            max_literal_bytes=limits.imap_max_literal_bytes,
        )
        self.state = State.NOT_AUTHENTICATED
        self.principal: Principal | None = None
        self.selected: Selected | None = None
        self.enabled: set[str] = set()
        self.out = bytearray()
        self.bad_in_a_row = 0
        # A commit (IDLE, NOTIFY) or a revocation for a session waiting for input:
        # `_wake` sets this and ends the wait (`_waiter`) at once.
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None
        self.idling = False  # in IDLE, waiting: commits wake the session at once
        # NOTIFY (RFC 5465): the spec, the other folders watched (id -> what to report
        # there), those with news not yet sent, and whether the session is waiting
        # for a command (then news is sent at once, as in IDLE).
        self.notify_spec: NotifySpec | None = None
        self.notify_watch: dict[int, Watched] = {}
        self.notify_pending: set[int] = set()
        self.notify_sent: dict[int, tuple[tuple[c.StatusAttr, int], ...]] = {}
        self.waiting_notify = False
        self.revoked: str | None = None  # why the session must end (access withdrawn)
        # The rights worked out for this session (relay.imap.handlers.common.rights),
        # good for one config (a reload replaces it), one day and one principal.
        self.rights_memo: tuple[object, object, object, dict[object, str]] | None = None
        self._read_task: asyncio.Task[bytes] | None = None
        self.id = secrets.token_hex(4)
        self.connected_at = self.runtime.clock()  # `mss-relay who`
        # Timeouts (issue 9, item 5): a total time to authenticate, counted from the
        # connection and never reset (a byte a second used to keep a connection open
        # for ever); after login, RFC 3501 §5.4's autologout timer, reset by each
        # complete command (not by each byte).
        # Refusals recorded in the audit trail: at most so many a minute (item 10).
        self.refusals = WindowLimiter(limits.imap_refusals_audited_per_minute, 60.0)
        now = asyncio.get_running_loop().time()
        self.login_deadline = now + limits.imap_login_timeout_seconds
        self.idle_deadline = now + limits.imap_idle_timeout_seconds

    # --- IMAP4rev2 (RFC 9051, relay.imap.rev2) ----------------------------------------

    @property
    def rev2(self) -> bool:
        """Whether the client has run ``ENABLE IMAP4rev2`` (RFC 9051 §6.3.1)."""
        return rev2.ENABLED in self.enabled

    def mailbox(self, name: str) -> bytes:
        """A mailbox name (stored form) as this client reads it: modified UTF-7 in an
        IMAP4rev1 session, UTF-8 once IMAP4rev2 is enabled (RFC 9051 §5.1, Appendix A)."""
        if self.rev2:
            return r.string(rev2.wire_name(name), utf8=True)
        return r.quoted(name)

    # --- output ---------------------------------------------------------------------

    def emit(self, data: bytes) -> None:
        self.out += data

    async def flush(self) -> None:
        if self.out:
            data = bytes(self.out)
            self.out.clear()
            self.writer.write(data)
            await self.writer.drain()

    async def flush_if_large(self) -> None:
        if len(self.out) >= FLUSH_AT:
            await self.flush()

    # --- input ----------------------------------------------------------------------

    def _deadline(self, limit_seconds: float | None) -> float:
        """When the wait for input ends: the caller's limit (IDLE), the idle timer, and
        before login the total time to authenticate, whichever comes first."""
        loop = asyncio.get_running_loop()
        deadline = self.idle_deadline if limit_seconds is None else loop.time() + limit_seconds
        if self.state is State.NOT_AUTHENTICATED:
            deadline = min(deadline, self.login_deadline)
        return deadline

    def active(self) -> None:
        """A complete command (or a literal's start) arrived: restart the idle timer."""
        limits = self.runtime.config.limits
        self.idle_deadline = asyncio.get_running_loop().time() + limits.imap_idle_timeout_seconds

    async def receive(
        self, limit_seconds: float | None = None, *, wake_on_notify: bool = False
    ) -> bytes | None:
        """Next bytes from the client; None on end of stream. Raises TimeoutError.

        Returns b"" when woken by a notification (`wake_on_notify`, IDLE) and on
        revocation raises Closing after emitting BYE. Only an idling session is woken
        by commits (`notify`); the others learn of them before their next tagged reply.
        """
        self.idling = wake_on_notify
        try:
            return await self._receive(limit_seconds, wake_on_notify)
        finally:
            self.idling = False

    async def _receive(self, limit_seconds: float | None, wake_on_notify: bool) -> bytes | None:
        await self.flush()
        deadline = self._deadline(limit_seconds)
        loop = asyncio.get_running_loop()
        while True:
            self._check_revoked()
            if wake_on_notify and self._has_news():
                return b""  # a commit came before this wait began
            if self._read_task is None:
                self._read_task = loop.create_task(self.stream.read(READ_CHUNK))
            read = self._read_task
            if not read.done() and not self._woken:
                # One future that the read, a wake-up or the deadline ends: no second
                # task and no asyncio.wait per command (half the cost of the wait,
                # measured with uvloop: 52 -> 25 us).
                waiter = self._waiter = loop.create_future()
                read.add_done_callback(self._end_wait)
                timer = loop.call_at(deadline, self._end_wait)
                try:
                    await waiter
                finally:
                    self._waiter = None
                    read.remove_done_callback(self._end_wait)
                    timer.cancel()
            if read.done():
                self._read_task = None
                data = read.result()
                return data or None
            if self._woken:
                self._woken = False
                self._check_revoked()
                if wake_on_notify:
                    return b""
                continue
            if self.state is State.NOT_AUTHENTICATED and deadline >= self.login_deadline:
                raise LoginTimeout
            raise TimeoutError

    def _end_wait(self, _: object = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake(self) -> None:
        """End the wait for input now (or the next one, if none is under way)."""
        self._woken = True
        self._end_wait()

    def _has_news(self) -> bool:
        """Whether something is waiting to be told (IDLE, or NOTIFY between commands)."""
        if self.notify_pending:
            return True
        if self.selected is None or not self.selected.dirty:
            return False
        return (self.idling and not self.waiting_notify) or self._notify_selected()

    def _notify_selected(self) -> bool:
        group = self.notify_spec.selected if self.notify_spec is not None else None
        return group is not None and bool(group.events)

    def _check_revoked(self) -> None:
        if self.revoked is not None:
            self.emit(r.untagged_status(r.Status.BYE, self.revoked))
            raise Closing

    async def read_line(self) -> bytes | ParseFailure | None:
        """A raw client line (AUTHENTICATE responses); None on end of stream."""
        while True:
            line = self.reader.read_line()
            if line is not None:
                return line
            data = await self.receive()
            if data is None:
                return None
            self.reader.feed(data)

    # --- main loop ------------------------------------------------------------------

    async def run(self) -> None:
        try:
            self.emit(
                r.untagged_status(
                    r.Status.OK,
                    "mss-relay IMAP ready",
                    r.capability_code(self.service.capabilities(self)),
                )
            )
            await self._loop()
        except Closing:
            pass
        except LoginTimeout:
            seconds = self.runtime.config.limits.imap_login_timeout_seconds
            self.emit(
                r.untagged_status(
                    r.Status.BYE, f"No login within {seconds} seconds of connecting: closing"
                )
            )
        except TimeoutError:
            self.emit(r.untagged_status(r.Status.BYE, "Autologout: idle for too long"))
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            self.deselect()
            self.service.unwatch_notify(self, set(self.notify_watch))
            if self._read_task is not None:
                self._read_task.cancel()
            await self._audit_suppressed()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush(), 5)
            with contextlib.suppress(Exception):
                self.writer.close()
            self.state = State.LOGOUT

    async def _audit_suppressed(self) -> None:
        count = self.refusals.take_suppressed()
        if count and self.principal is not None:
            with contextlib.suppress(Exception):
                await self.runtime.store.record(
                    ImapRefusalsSuppressed(
                        person=self.principal.person_id,
                        peer=self.peer,
                        box=self.principal.as_box,
                        count=count,
                        answer=f"{count} refusals past the per-minute allowance",
                    )
                )

    async def _loop(self) -> None:
        while self.state is not State.LOGOUT:
            event = self.reader.next_event()
            if isinstance(event, NeedData):
                if self.notify_spec is not None:
                    data = await self._wait_notifying()
                else:
                    data = await self.receive()
                if data is None:
                    return
                self.reader.feed(data)
                continue
            self.active()
            if isinstance(event, NeedContinuation):
                self.emit(r.continuation("Ready for literal data"))
                continue
            if isinstance(event, ParseFailure):
                await self._parse_failure(event)
                continue
            await self._run_command(event)
            self.active()  # a long command (IDLE) does not eat the next wait's time
            await self.flush_if_large()

    async def _wait_notifying(self) -> bytes | None:
        """Wait for a command while NOTIFY is set: news is sent as it comes (RFC 5465 §3)."""
        from relay.imap.handlers.notify import deliver

        while True:
            await deliver(self)
            self.waiting_notify = True
            try:
                data = await self.receive(wake_on_notify=True)
            finally:
                self.waiting_notify = False
            if data != b"":
                return data

    async def _parse_failure(self, failure: ParseFailure) -> None:
        code: r.ResponseCode | None = r.ResponseCode(failure.code) if failure.code else None
        if failure.tag is None:
            self.emit(r.untagged_status(r.Status.BAD, failure.message, code))
        else:
            self.emit(r.tagged(failure.tag, r.Status(failure.status), failure.message, code))
        self.service.probe.command(f"({failure.kind.value})", failure.status.lower())
        if failure.status == "BAD":
            self._count_bad()
        else:
            self.bad_in_a_row = 0

    def _count_bad(self) -> None:
        self.bad_in_a_row += 1
        if self.bad_in_a_row >= self.runtime.config.limits.max_bad_commands:
            self.emit(r.untagged_status(r.Status.BYE, "Too many invalid commands"))
            raise Closing

    async def _run_command(self, cmd: c.Command) -> None:
        # One count per command, with the status of its tagged reply (`cmd.name` comes
        # from the parser's fixed set of commands).
        outcome = CommandResult.OK
        try:
            outcome = await self._dispatch(cmd)
        except Closing:
            raise
        except Exception:  # a lost connection mid-command
            outcome = CommandResult.ERROR
            raise
        finally:
            self.service.probe.command(cmd.name, outcome)

    async def _dispatch(self, cmd: c.Command) -> str:
        """Run `cmd` and emit its tagged reply; return the `CommandResult`."""
        from relay.imap.handlers import HANDLERS

        if not allowed(self.state, type(cmd)):
            self.emit(r.tagged(cmd.tag, r.Status.BAD, f"{cmd.name} is not valid in this state"))
            self._count_bad()
            return CommandResult.BAD
        handler = HANDLERS[type(cmd)]
        sent = cmd
        if self.rev2:
            cmd = rev2.internal_names(cmd)  # UTF-8 names to the stored form (§5.1)
        try:
            result = await handler(self, cmd)
        except Closing:
            raise
        except ProtocolError as exc:
            if exc.log_detail:
                log.info("imap.refused", session=self.id, command=cmd.name, detail=exc.log_detail)
            await self._settle(cmd)
            err_code: r.ResponseCode | r.Code | None = None
            if exc.imap_code:
                # A code may carry an argument: [BADURL "url"], [NOUPDATE "tag"].
                argument: str = getattr(exc, "imap_argument", "")
                err_code = r.ResponseCode(exc.imap_code)
                err_code = r.Code(err_code, argument) if argument else err_code
            status = r.Status.BAD if exc.imap_status == "BAD" else r.Status.NO
            self.emit(r.tagged(cmd.tag, status, exc.text, err_code))
            if isinstance(exc, PermissionDenied) and exc.audited_box is not None:
                await self._audit_refusal(cmd, exc, exc.audited_box)
            if status is r.Status.BAD:
                self._count_bad()
                return CommandResult.BAD
            self.bad_in_a_row = 0
            return CommandResult.NO
        except (ConnectionError, ssl.SSLError):
            raise
        except FolderMissing:
            # Deleted or renamed by another session between the command's check and its
            # transaction: what the check would have answered a moment later.
            await self._settle(cmd)
            missing = r.ResponseCode.TRYCREATE
            if not isinstance(cmd, _DESTINATIONS):
                missing = r.ResponseCode.NONEXISTENT
            self.emit(r.tagged(cmd.tag, r.Status.NO, "No such mailbox", missing))
            self.bad_in_a_row = 0
            return CommandResult.NO
        except Exception:
            ref = secrets.token_hex(6)
            log.exception("imap.server_bug", session=self.id, command=cmd.name, reference=ref)
            self.emit(
                r.tagged(
                    cmd.tag,
                    r.Status.NO,
                    f"Internal error, reference {ref}",
                    r.ResponseCode.SERVERBUG,
                )
            )
            self.bad_in_a_row = 0
            return CommandResult.ERROR
        self.bad_in_a_row = 0
        if result is None:
            return CommandResult.OK  # the handler answered itself (LOGOUT, STARTTLS, IDLE)
        text, code = result
        if sent is not cmd and (renamed := rev2.oldname(sent)) is not None:
            self.emit(renamed)
        await self._settle(cmd)
        self.emit(r.tagged(cmd.tag, r.Status.OK, text, code))
        return CommandResult.OK

    async def _audit_refusal(self, cmd: c.Command, exc: PermissionDenied, box: str) -> None:
        """Record a refused operation on a traced box (issue 9, item 10): the request and
        the answer, at most `imap_refusals_audited_per_minute` a session (the rest are
        counted, and the count goes with the next recorded one and the session's end)."""
        assert self.principal is not None
        allowance = self.runtime.config.limits.imap_refusals_audited_per_minute
        self.refusals.per_window = allowance
        if not self.refusals.allow(asyncio.get_running_loop().time()):
            return
        request = describe(cmd, self.selected.name if self.selected is not None else None)
        await self.runtime.store.record(
            ImapRefused(
                person=self.principal.person_id,
                box=box,
                peer=self.peer,
                request=request,
                answer=f"NO [{exc.imap_code}] {exc.text}",
                folder=exc.folder,
                suppressed=self.refusals.take_suppressed(),
            )
        )

    async def _settle(self, cmd: c.Command) -> None:
        """Send pending folder updates before a tagged response (RFC 3501 §7)."""
        if self.notify_pending and self.principal is not None:
            from relay.imap.handlers.notify import deliver_others

            await deliver_others(self)
        if self.selected is None or self.principal is None:
            return
        no_expunge = isinstance(cmd, c.Fetch | c.Store | c.Search) and not getattr(
            cmd, "uid", False
        )
        with contextlib.suppress(FolderMissing):
            await self.refresh(allow_expunge=not no_expunge)
        sel = self.selected
        if sel is not None and sel.pending_expunge and "QRESYNC" in self.enabled:
            # RFC 7162 §3.2: a client that saw MODSEQs above a removal it has not been
            # told of yet must not think it is past it: a HIGHESTMODSEQ below it.
            below = min(sel.pending_expunge.values()) - 1
            self.emit(r.untagged_status(r.Status.OK, "Still to come", r.highestmodseq(below)))

    # --- state ----------------------------------------------------------------------

    def move(self, event: Event) -> None:
        self.state = transition(self.state, event)

    def authenticated(self, principal: Principal) -> None:
        self.principal = principal
        self.move(Event.AUTHENTICATED)
        self.service.register(self)

    def select(self, selected: Selected) -> None:
        self.deselect()
        self.selected = selected
        # A commit between the snapshot read and this watch woke nobody: look once.
        selected.dirty = True
        self.service.watch(self, selected.folder.id)
        self.move(Event.SELECTED)

    def deselect(self, event: Event = Event.DESELECTED) -> None:
        if self.selected is not None:
            self.service.unwatch(self, self.selected.folder.id)
            self.selected = None
        if self.state is State.SELECTED:
            self.move(event)

    def notify(self, folder_id: int) -> None:
        """Called after a commit touched `folder_id` (the selected folder)."""
        if self.selected is not None and self.selected.folder.id == folder_id:
            self.selected.dirty = True
            if self.idling and (not self.waiting_notify or self._notify_selected()):
                self._wake()
        if folder_id in self.notify_watch:
            self.notify_pending.add(folder_id)
            if self.idling:
                self._wake()

    def update_flags(self, f: Flagged) -> None:
        """Record a message's new state; announce any keyword the client has not been
        told of first (FLAGS / PERMANENTFLAGS, RFC 3501 §7.2.6), so that it is in the
        output before any FETCH that shows it."""
        sel = self.selected
        assert sel is not None
        sel.set_flags(f)
        for line in sel.mailbox_flags.learn(f.flags):
            self.emit(line)

    def enable_condstore(self) -> None:
        """A CONDSTORE-enabling command ran (RFC 7162 §3.1): from now on flag changes
        carry MODSEQ; if a mailbox is selected the client learns its HIGHESTMODSEQ."""
        if "CONDSTORE" in self.enabled:
            return
        self.enabled.add("CONDSTORE")
        if self.selected is not None:
            self.emit(
                r.untagged_status(
                    r.Status.OK, "Highest", r.highestmodseq(self.selected.highestmodseq)
                )
            )

    def set_notify(self, spec: NotifySpec | None, watch: dict[int, Watched]) -> None:
        """Replace the NOTIFY spec and the folders watched for it (RFC 5465 §3)."""
        self.service.unwatch_notify(self, set(self.notify_watch))
        self.notify_spec = spec
        self.notify_watch = dict(watch)
        self.notify_pending.clear()
        self.service.watch_notify(self, set(watch))

    def unwatch_one(self, folder_id: int) -> None:
        """Stop reporting a folder (gone, or the person may no longer read it)."""
        self.notify_watch.pop(folder_id, None)
        self.notify_pending.discard(folder_id)
        self.service.unwatch_notify(self, {folder_id})

    def revoke(self, reason: str) -> None:
        """End the session at once (access withdrawn by a config reload)."""
        self.revoked = reason
        self._wake()

    # --- snapshot updates -----------------------------------------------------------

    async def refresh(self, *, allow_expunge: bool) -> None:
        """Bring the snapshot up to date and emit EXISTS / EXPUNGE / FETCH (and the
        NOTIFY news of other folders, RFC 5465)."""
        if self.notify_pending and self.principal is not None:
            from relay.imap.handlers.notify import deliver_others

            await deliver_others(self)
        sel = self.selected
        if sel is None:
            return
        if sel.dirty:
            sel.dirty = False
            changes = await self.service.changes(sel.folder.id, sel.highestmodseq, sel.seen_person)
            for uid, modseq in changes.expunged_at:
                if uid in sel.flags:
                    sel.pending_expunge[uid] = modseq
            new: list[Flagged] = []
            condstore = "CONDSTORE" in self.enabled
            for f in changes.changed:
                old = sel.flags.get(f.uid)
                if old is None:
                    new.append(f)
                    continue
                if old.modseq == f.modseq:
                    continue  # our own change, already answered
                self.update_flags(f)
                if old.flags != f.flags or condstore:
                    items = [b"FLAGS " + sel.flag_list(f.uid)]
                    items.append(b"UID %d" % f.uid)
                    if condstore:
                        items.append(b"MODSEQ (%d)" % f.modseq)
                    self.emit(r.untagged(b"%d FETCH " % sel.seq_of(f.uid) + r.paren(items)))
            if new:
                await self._take_recent(sel, [f.uid for f in new], changes.recent_uid)
                for f in new:
                    self.update_flags(f)
                    bisect.insort(sel.uids, f.uid)
            sel.highestmodseq = max(sel.highestmodseq, changes.highestmodseq)
            if allow_expunge:
                self._expunge_pending()
            if new:
                self.emit(r.untagged(b"%d EXISTS" % len(sel.uids)))
                if not self.rev2:  # RFC 9051 has no \Recent (Appendix E item 12)
                    self.emit(r.untagged(b"%d RECENT" % len(sel.recent)))
        elif allow_expunge and sel.pending_expunge:
            self._expunge_pending()
        if sel.contexts:
            from relay.imap.handlers.contexts import update_contexts

            await update_contexts(self, sel)

    async def _take_recent(self, sel: Selected, uids: list[int], watermark: int) -> None:
        """Which of the newly seen `uids` are \\Recent for this session (RFC 3501 §2.3.2):
        a read-write session takes those no session has been told of (the folder's
        watermark moves past them, so no other session sees them as recent); a
        read-only one (EXAMINE) shows them as recent without taking them."""
        top = max(uids)
        if sel.read_only:
            first = watermark
        else:
            first = await self.service.claim_recent(sel.folder.id, top + 1, watermark)
        sel.recent.update(u for u in uids if u >= first)

    def _expunge_pending(self) -> None:
        sel = self.selected
        assert sel is not None
        self.forget_all(list(sel.pending_expunge))
        sel.pending_expunge.clear()

    def forget(self, uid: int) -> None:
        """Remove `uid` from the snapshot and tell the client (`forget_all`)."""
        self.forget_all([uid])

    def forget_all(self, uids: Iterable[int]) -> None:
        """Remove messages from the snapshot and tell the client: ``n EXPUNGE`` for
        each, in order (RFC 3501 §7.4.1), or one ``VANISHED uid-set`` once QRESYNC
        is enabled (RFC 7162 §3.2.10)."""
        sel = self.selected
        assert sel is not None
        gone = sorted({u for u in uids if u in sel.flags})
        if not gone:
            return
        vanished = "QRESYNC" in self.enabled
        for uid in gone:
            seq = sel.seq_of(uid)
            for ctx in sel.contexts:
                # RFC 5267 §4.3: the REMOVEFROM names the message before its EXPUNGE
                # (or the VANISHED that stands for it).
                if (update := ctx.drop(uid, seq)) is not None:
                    self.emit(r.untagged(update))
            del sel.uids[seq - 1]
            sel.drop(uid)
            sel.recent.discard(uid)
            sel.rows.pop(uid, None)
            sel.pending_expunge.pop(uid, None)
            if not vanished:
                self.emit(r.untagged(b"%d EXPUNGE" % seq))
        if vanished:
            self.emit(r.untagged("VANISHED " + r.sequence_set(gone)))
