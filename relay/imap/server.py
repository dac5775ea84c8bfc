"""The IMAP listener (edge): sockets, TLS, the sessions it serves, and the wake-ups.

`make_listener(runtime, listener_config)` is what `relay.app` starts for each
``kind = "imap"`` listener: STARTTLS (port 143, RFC 3501 §6.2.1 / RFC 9051) or
implicit TLS (port 993, RFC 8314). The service keeps, per folder id, the sessions
that have it selected; `Store.on_commit` tells it which folders a commit touched, and
it wakes those sessions (IDLE pushes at once, others before their next tagged reply).
The woken sessions then ask `ImapService.changes`, answered from the folder's in-memory
index (`relay.store.folderindex`), which reads what a commit changed once for all of
them; SELECT and STATUS are answered from the same index.
A config reload that withdraws a person's access to a box closes that person's
sessions on it with ``BYE`` (`relay.config.lost_access`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import Callable

import structlog

from relay.audit.events import AuditEvent, ImapAccessRevoked
from relay.config import lost_access
from relay.config.model import Config, ListenerConfig, TlsConfig, TlsMode
from relay.control.model import SessionFacts
from relay.imap import response as r
from relay.imap import rev2
from relay.imap.session import Session
from relay.imap.sort import KeyCache
from relay.imap.state import State
from relay.message.imapview import Rendered
from relay.runtime import Runtime
from relay.store.folderindex import FolderIndex
from relay.store.mailstore import Changes, Flagged, FolderMissing, FolderStatus
from relay.tls.context import CertificateFacts, ListenerContext

log = structlog.get_logger("relay.imap")

# What every authenticated session may use (RFC 3501 + the extensions implemented).
EXTENSIONS: tuple[str, ...] = (
    "LITERAL+",  # RFC 7888
    "ID",  # RFC 2971
    "ENABLE",  # RFC 5161
    "IDLE",  # RFC 2177
    "NAMESPACE",  # RFC 2342
    "UIDPLUS",  # RFC 4315
    "MOVE",  # RFC 6851
    "UNSELECT",  # RFC 3691
    "CHILDREN",  # RFC 3348
    "LIST-EXTENDED",  # RFC 5258
    "LIST-STATUS",  # RFC 5819
    "SPECIAL-USE",  # RFC 6154
    "ESEARCH",  # RFC 4731
    "STATUS=SIZE",  # RFC 8438 (and STATUS DELETED, RFC 9051 §6.3.11, to any session)
    "ACL",  # RFC 4314
    "RIGHTS=kxte",  # RFC 4314 §2.1.1
    "CONDSTORE",  # RFC 7162 §3.1
    "QRESYNC",  # RFC 7162 §3.2
    "SORT",  # RFC 5256 (relay.imap.sort)
    "SORT=DISPLAY",  # RFC 5957
    "ESORT",  # RFC 5267 §3
    "THREAD=ORDEREDSUBJECT",  # RFC 5256 (relay.imap.thread)
    "THREAD=REFERENCES",
    "SEARCHRES",  # RFC 5182
    "CONTEXT=SEARCH",  # RFC 5267 §4 (relay.imap.context)
    "CONTEXT=SORT",
    "MULTIAPPEND",  # RFC 3502 (relay.imap.handlers.multiappend)
    "CATENATE",  # RFC 4469
    "BINARY",  # RFC 3516
    "NOTIFY",  # RFC 5465 (relay.imap.handlers.notify)
)

# Sort and thread keys kept in memory (a few hundred bytes each): 10,000-message
# folders sort without reading the store once their keys are known.
SORT_KEY_CACHE_ENTRIES = 200_000
# ENVELOPE / BODYSTRUCTURE values kept (relay.message.imapview.Rendered), under 1 KB each.
RENDERED_ENTRIES = 20_000


def _retrieve(future: asyncio.Future[int]) -> None:
    # The claimer may have gone (cancelled): the outcome is still retrieved.
    if not future.cancelled():
        future.exception()


class ImapService:
    """One IMAP listener and the sessions it serves."""

    def __init__(self, runtime: Runtime, listener: ListenerConfig) -> None:
        self.runtime = runtime
        self.listener = listener
        self.mail = runtime.indexes.mail  # one per daemon: its caches serve every listener
        self.probe = runtime.metrics.listener("imap", listener.host, listener.port)
        self.sort_keys = KeyCache(SORT_KEY_CACHE_ENTRIES)
        self.rendered = Rendered(RENDERED_ENTRIES)
        self._tls: ListenerContext | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.sessions: set[Session] = set()
        # Open connections per client address (issue 9, item 5: caps); refusals counted
        # to keep the log from flooding under a connection flood.
        self.per_ip: dict[str, int] = {}
        self.refused = 0
        self._watchers: dict[int, set[Session]] = {}
        self._notify_watchers: dict[int, set[Session]] = {}  # NOTIFY, RFC 5465
        # Per watched folder, a UID below which every message's \Recent is known to be
        # taken (a lower bound of `folders.recent_uid`, which only grows).
        self._recent_floor: dict[int, int] = {}
        # The \Recent claim being written per folder: (upto, its transaction).
        self._claims: dict[int, tuple[int, asyncio.Future[int]]] = {}
        runtime.store.on_commit(self._on_commit)
        runtime.reload_hooks.append(self._on_reload)

    @property
    def tls_context(self) -> ssl.SSLContext | None:
        """The newest server context (STARTTLS and new implicit-TLS handshakes)."""
        return self._tls.current if self._tls is not None else None

    def replace_tls(self, tls: TlsConfig) -> None:
        """New CRLs (the refresher calls this): new connections get the new context."""
        if self._tls is not None:
            self._tls.replace(tls)

    @property
    def listener_config(self) -> ListenerConfig:
        return self.listener

    @property
    def tls_certificate(self) -> CertificateFacts | None:
        """The certificate new connections are offered (`mss-relay status`)."""
        return self._tls.certificate if self._tls is not None else None

    def session_facts(self) -> list[SessionFacts]:
        """The open sessions (`mss-relay who`)."""
        facts: list[SessionFacts] = []
        for s in self.sessions:
            ssl_object = s.writer.get_extra_info("ssl_object")
            box = s.principal.as_box if s.principal is not None else None
            if s.selected is not None:
                box = s.selected.target.box
            facts.append(
                SessionFacts(
                    protocol="imap",
                    listener=self.name,
                    person=s.principal.person_id if s.principal is not None else None,
                    box=box,
                    client=s.peer,
                    since=s.connected_at.astimezone(dt.UTC).isoformat(timespec="seconds"),
                    tls=ssl_object.version() if ssl_object is not None else None,
                )
            )
        return facts

    def kick(self, person: str, box: str | None) -> int:
        """End `person`'s sessions with BYE (those acting as or on `box` if given)."""
        cut = 0
        for s in list(self.sessions):
            if s.principal is None or s.principal.person_id != person:
                continue
            if box is not None:
                on = {s.principal.as_box}
                if s.selected is not None:
                    on.add(s.selected.target.box)
                if box not in on:
                    continue
            s.revoke("Disconnected by the administrator")
            cut += 1
        return cut

    @property
    def description(self) -> str:
        lc = self.listener
        return f"imap on {lc.host}:{lc.port} (tls {lc.tls.value})"

    def capabilities(self, s: Session) -> list[str]:
        # RFC 9051 Appendix A: both revisions; a client turns IMAP4rev2 on with ENABLE.
        caps = ["IMAP4rev1", rev2.CAPABILITY]
        if s.state is State.NOT_AUTHENTICATED:
            if not s.tls_active and self.listener.tls is TlsMode.STARTTLS:
                # RFC 3501 §6.2.3 / RFC 2595 §3.2: no plaintext login.
                caps += ["STARTTLS", "LOGINDISABLED"]
            else:
                caps += ["AUTH=PLAIN", "AUTH=EXTERNAL"]
                if s.tls_active and self.runtime.authenticator.tokens_offered:
                    caps += ["AUTH=OAUTHBEARER", "AUTH=XOAUTH2"]  # RFC 7628 §3.3
                caps.append("SASL-IR")
        limit = self.runtime.config.limits.imap_max_literal_bytes
        return [*caps, *EXTENSIONS, f"APPENDLIMIT={limit}"]  # RFC 7889

    # --- lifecycle ------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.probe.name

    @property
    def serving(self) -> bool:
        """Whether the socket accepts connections (the health check asks)."""
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        lc = self.listener
        if lc.tls is not TlsMode.NONE:
            self._tls = ListenerContext(
                self.runtime.config.tls, require_client_certificate=lc.require_client_certificate
            )
        self._server = await asyncio.start_server(
            self._accept,
            host=lc.host,
            port=lc.port,
            ssl=self.tls_context if lc.tls is TlsMode.IMPLICIT else None,
            reuse_address=True,
            limit=2**16,
        )

    async def stop(self, grace_seconds: float) -> None:
        # A listener a reload removes is not called again (nor kept alive by the hooks).
        self.runtime.store.off_commit(self._on_commit)
        with contextlib.suppress(ValueError):
            self.runtime.reload_hooks.remove(self._on_reload)
        if self._server is None:
            return
        self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        # Sessions waiting for a command end at once with BYE; busy ones finish it.
        for s in list(self.sessions):
            s.revoke("mss-relay shutting down")
        while self._tasks and loop.time() < deadline:
            await asyncio.wait(set(self._tasks), timeout=max(deadline - loop.time(), 0.01))
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)

    def _refusal(self, ip: str) -> str | None:
        """Why a new connection from `ip` is refused (RFC 3501 §7.1.5: BYE as the
        greeting), or None."""
        limits = self.runtime.config.limits
        if len(self._tasks) >= limits.max_connections_per_listener:
            return (
                f"Server busy: {limits.max_connections_per_listener} connections already, "
                "try again later"
            )
        if self.per_ip.get(ip, 0) >= limits.max_connections_per_ip:
            return (
                f"Too many connections from {ip} (limit {limits.max_connections_per_ip}): "
                "close some, then try again"
            )
        return None

    async def _refuse(self, writer: asyncio.StreamWriter, ip: str, refusal: str) -> None:
        self.refused += 1
        if self.refused % 100 == 1:  # the first, then one in a hundred
            log.warning("imap.connection_refused", peer=ip, why=refusal, refused=self.refused)
        with contextlib.suppress(Exception):
            writer.write(r.untagged_status(r.Status.BYE, refusal))
            await asyncio.wait_for(writer.drain(), 5)
        writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        refusal = self._refusal(ip)
        if refusal is not None:
            await self._refuse(writer, ip, refusal)
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        session = Session(self, reader, writer, tls_active=self.listener.tls is TlsMode.IMPLICIT)
        self.sessions.add(session)
        self.probe.opened()
        try:
            await session.run()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                writer.write(r.untagged_status(r.Status.BYE, "mss-relay shutting down"))
                writer.close()
        except Exception:
            log.exception("imap.session_failed", session=session.id)
        finally:
            self.probe.closed()
            self.sessions.discard(session)
            self._tasks.discard(task)
            left = self.per_ip.get(ip, 1) - 1
            if left:
                self.per_ip[ip] = left
            else:
                self.per_ip.pop(ip, None)

    # --- sessions and wake-ups ------------------------------------------------------

    def register(self, s: Session) -> None:
        self.sessions.add(s)

    def watch(self, s: Session, folder_id: int) -> None:
        self._watchers.setdefault(folder_id, set()).add(s)

    def unwatch(self, s: Session, folder_id: int) -> None:
        watchers = self._watchers.get(folder_id)
        if watchers is not None:
            watchers.discard(s)
            if not watchers:
                del self._watchers[folder_id]
                self._recent_floor.pop(folder_id, None)

    def watch_notify(self, s: Session, folder_ids: set[int]) -> None:
        """Wake `s` after commits to these folders (other than its selected one)."""
        for fid in folder_ids:
            self._notify_watchers.setdefault(fid, set()).add(s)

    def unwatch_notify(self, s: Session, folder_ids: set[int]) -> None:
        for fid in folder_ids:
            watchers = self._notify_watchers.get(fid)
            if watchers is not None:
                watchers.discard(s)
                if not watchers:
                    del self._notify_watchers[fid]

    def _on_commit(self, folder_ids: frozenset[int]) -> None:
        for fid in folder_ids:
            watchers = self._watchers.get(fid)
            if watchers:
                for s in list(watchers):
                    s.notify(fid)
            for s in list(self._notify_watchers.get(fid, ())):
                s.notify(fid)

    async def changes(self, folder_id: int, since: int, person: str | None) -> Changes:
        """What changed in a folder above MODSEQ `since`, as `person` sees it.

        From the folder's in-memory index (`Runtime.indexes`), brought forward once per
        commit for every session that asks; a session further behind than the index
        goes back is answered by the store."""
        index = await self.runtime.indexes.get(folder_id)
        found = index.changes(since, person)
        if found is not None:
            return found
        return await self.mail.changes(folder_id, since, person)

    async def status(self, folder_id: int, person: str | None) -> FolderStatus:
        """STATUS counts of a folder, from its index."""
        return (await self.runtime.indexes.get(folder_id)).status(person)

    async def snapshot(
        self, box: str, name: str, person: str | None
    ) -> tuple[FolderIndex, list[int], dict[int, Flagged], dict[frozenset[str], set[int]]]:
        """What SELECT keeps of a folder: its index (head, keywords), the UIDs in
        order, each message's flags as `person` sees them and the UIDs of each flag
        set (copies)."""
        index = await self.runtime.indexes.find(box, name)
        if index is None:
            raise FolderMissing("no such folder")
        uids, flags, buckets = index.snapshot(person)
        return index, uids, flags, buckets

    async def expunge(
        self,
        folder_id: int,
        uids: list[int] | None,
        make_event: Callable[[tuple[int, ...], tuple[str, ...]], AuditEvent | None],
    ) -> list[tuple[int, str | None]]:
        """EXPUNGE (`MailStore.expunge`), with no write when the folder's index, current
        with every commit announced, has no \\Deleted message among `uids` (all if
        None): a client's EXPUNGE or CLOSE usually finds nothing to remove (imaptest's
        session load: two in three), and each was a unit of the writer all the same.
        What the index has not heard of yet (another node's commit, whose NOTIFY is on
        its way) a session of this node has not been told of either."""
        if not (await self.runtime.indexes.get(folder_id)).any_deleted(uids):
            return []
        return await self.mail.expunge(folder_id, uids, make_event)

    async def claim_recent(self, folder_id: int, upto: int, known: int) -> int:
        """Take \\Recent below UID `upto` for the calling session (RFC 3501 §2.3.2,
        `MailStore.claim_recent`); returns the folder's watermark before the claim.

        `known` is a watermark the caller read. When it, or what this node's sessions
        have already taken, is at or above `upto`, nothing is left to take and no
        write is made: when several sessions see a new message, one transaction (the
        first) takes it, not one per session."""
        floor = max(self._recent_floor.get(folder_id, 0), known)
        if floor >= upto:
            return floor
        pending = self._claims.get(folder_id)
        if pending is not None and pending[0] >= upto:
            # Another session of this node is taking them (all of ours): wait for its
            # transaction instead of writing one more, and take none.
            with contextlib.suppress(Exception):
                await asyncio.shield(pending[1])
                return pending[0]
        claim = asyncio.ensure_future(self.mail.claim_recent(folder_id, upto))
        claim.add_done_callback(_retrieve)
        self._claims[folder_id] = (upto, claim)
        try:
            before = await asyncio.shield(claim)
        finally:
            if self._claims.get(folder_id, (0, None))[1] is claim:
                del self._claims[folder_id]
        if (index := self.runtime.indexes.cached(folder_id)) is not None:
            index.took_recent(upto)
        if folder_id in self._watchers:
            self._recent_floor[folder_id] = max(self._recent_floor.get(folder_id, 0), before, upto)
        return before

    def _on_reload(self, old: Config, new: Config) -> None:
        """Close the sessions of people who lost access to the box they use."""
        lost = lost_access(old, new, self.runtime.today())
        if not lost:
            return
        closed: dict[tuple[str, str], int] = {}
        for s in list(self.sessions):
            if s.principal is None:
                continue
            person = s.principal.person_id
            boxes = {s.principal.as_box} if s.principal.as_box else set()
            if s.selected is not None:
                boxes.add(s.selected.target.box)
            for box in boxes:
                if box is not None and (box, person) in lost:
                    s.revoke(f"Access to {box} was withdrawn by the administrator")
                    closed[(box, person)] = closed.get((box, person), 0) + 1
        if closed:
            task = asyncio.get_running_loop().create_task(self._record_revocations(closed))
            self._background = task

    async def _record_revocations(self, closed: dict[tuple[str, str], int]) -> None:
        await self.runtime.store.record(
            *(
                ImapAccessRevoked(person=person, box=box, sessions=n, answer="BYE")
                for (box, person), n in sorted(closed.items())
            )
        )


def make_listener(runtime: Runtime, listener_config: ListenerConfig) -> ImapService:
    """The IMAP listener for `relay.app` (kind = "imap")."""
    return ImapService(runtime, listener_config)


__all__ = ["ImapService", "make_listener"]
