"""The IMAP listener (edge): sockets, TLS, the sessions it serves, and the wake-ups.

`make_listener(runtime, listener_config)` is what `relay.app` starts for each
``kind = "imap"`` listener: STARTTLS (port 143, RFC 3501 §6.2.1 / RFC 9051) or
implicit TLS (port 993, RFC 8314). The service keeps, per folder id, the sessions
that have it selected; `Store.on_commit` tells it which folders a commit touched, and
it wakes those sessions (IDLE pushes at once, others before their next tagged reply).
A config reload that withdraws a person's access to a box closes that person's
sessions on it with ``BYE`` (`relay.config.lost_access`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import TYPE_CHECKING

import structlog

from relay.audit.events import ImapAccessRevoked
from relay.config import lost_access
from relay.config.model import Config, ListenerConfig, TlsConfig, TlsMode
from relay.imap import response as r
from relay.imap.session import Session
from relay.imap.state import State
from relay.store.mailstore import MailStore
from relay.tls.context import ListenerContext

if TYPE_CHECKING:
    from relay.app import Runtime

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
    "ACL",  # RFC 4314
    "RIGHTS=kxte",  # RFC 4314 §2.1.1
    "CONDSTORE",  # RFC 7162
)


class ImapService:
    """One IMAP listener and the sessions it serves."""

    def __init__(self, runtime: Runtime, listener: ListenerConfig) -> None:
        self.runtime = runtime
        self.listener = listener
        self.mail = MailStore(runtime.store)
        self._tls: ListenerContext | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.sessions: set[Session] = set()
        self._watchers: dict[int, set[Session]] = {}
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
    def description(self) -> str:
        lc = self.listener
        return f"imap on {lc.host}:{lc.port} (tls {lc.tls.value})"

    def capabilities(self, s: Session) -> list[str]:
        caps = ["IMAP4rev1"]
        if s.state is State.NOT_AUTHENTICATED:
            if not s.tls_active and self.listener.tls is TlsMode.STARTTLS:
                # RFC 3501 §6.2.3 / RFC 2595 §3.2: no plaintext login.
                caps += ["STARTTLS", "LOGINDISABLED"]
            else:
                caps += ["AUTH=PLAIN", "AUTH=EXTERNAL", "SASL-IR"]
        limit = self.runtime.config.limits.imap_max_literal_bytes
        return [*caps, *EXTENSIONS, f"APPENDLIMIT={limit}"]  # RFC 7889

    # --- lifecycle ------------------------------------------------------------------

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

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        session = Session(self, reader, writer, tls_active=self.listener.tls is TlsMode.IMPLICIT)
        self.sessions.add(session)
        try:
            await session.run()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                writer.write(r.untagged_status(r.Status.BYE, "mss-relay shutting down"))
                writer.close()
        except Exception:
            log.exception("imap.session_failed", session=session.id)
        finally:
            self.sessions.discard(session)
            self._tasks.discard(task)

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

    def _on_commit(self, folder_ids: frozenset[int]) -> None:
        for fid in folder_ids:
            for s in list(self._watchers.get(fid, ())):
                s.notify(fid)

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
