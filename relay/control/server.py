"""The daemon's side of the control socket (edge).

A Unix stream socket, mode 0600 in a folder only the daemon's user can enter, and
each connection's peer credentials checked (SO_PEERCRED): only the daemon's own user
and root are answered. Each request line gets one response line
(`relay.control.protocol`); `ControlService` answers them from the running daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import structlog

from relay.audit.events import SessionsKicked
from relay.config.model import ListenerConfig
from relay.control.client import socket_address
from relay.control.model import (
    AnchorStatus,
    CertificateStatus,
    CrlStatus,
    IssuerStatus,
    KickReport,
    ListenerStatus,
    ReloadReport,
    SessionFacts,
    StatusReport,
    UpstreamSyncReport,
    WhoReport,
    sessions_sorted,
    to_json,
)
from relay.control.protocol import (
    MAX_REQUEST_BYTES,
    Command,
    ProtocolError,
    Request,
    Response,
    decode_request,
    encode_response,
)
from relay.runtime import Listener, Runtime
from relay.store.queue import QueueStore
from relay.tls.context import CertificateFacts

if TYPE_CHECKING:
    from relay.delivery.crl import CrlRefresher
    from relay.upstream.sync import UpstreamSync

log = structlog.get_logger("relay.control")

# `upstream sync`: how long the daemon waits for the round it asked for. A first sync
# of a large box takes minutes (about 2,000 messages/s from a local Dovecot); an
# operator that cannot be reached makes the round end at once with that state.
UPSTREAM_SYNC_MAX_SECONDS = 3600.0

# A client that connects and sends nothing is dropped after this.
REQUEST_TIMEOUT_SECONDS = 10.0
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid (socket(7))


class ControlError(Exception):
    """A request that cannot be served (unknown person...); the text goes back."""


class StartError(Exception):
    """The control socket cannot be set up; the message names it and says why."""


@runtime_checkable
class Inspectable(Protocol):
    """A listener that says what it is and which certificate it presents."""

    @property
    def listener_config(self) -> ListenerConfig: ...

    @property
    def tls_certificate(self) -> CertificateFacts | None: ...


@runtime_checkable
class SessionHolder(Protocol):
    """A listener whose sessions `who` lists and `kick` cuts."""

    def session_facts(self) -> list[SessionFacts]: ...

    def kick(self, person: str, box: str | None) -> int:
        """End `person`'s sessions (on `box` if given); how many."""
        ...


class ControlTarget(Protocol):
    """What the control commands read from (and do to) the running daemon."""

    @property
    def runtime(self) -> Runtime | None: ...

    @property
    def listeners(self) -> Sequence[Listener]: ...

    @property
    def crl_refresher(self) -> CrlRefresher | None: ...

    @property
    def config_path(self) -> Path: ...

    @property
    def started_at(self) -> dt.datetime: ...

    @property
    def upstream(self) -> UpstreamSync | None: ...

    async def reload(self) -> ReloadReport: ...


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="seconds")


def _address(lc: ListenerConfig) -> str:
    return f"[{lc.host}]:{lc.port}" if ":" in lc.host else f"{lc.host}:{lc.port}"


class ControlService:
    """The commands, by name (an explicit dispatch table)."""

    def __init__(self, target: ControlTarget, version: str) -> None:
        self.target = target
        self.version = version
        self.handlers: dict[Command, Callable[[Request, int], Awaitable[Response]]] = {
            Command.STATUS: self._status,
            Command.WHO: self._who,
            Command.KICK: self._kick,
            Command.RELOAD: self._reload,
            Command.UPSTREAM_SYNC: self._upstream_sync,
        }

    def _runtime(self) -> Runtime:
        runtime = self.target.runtime
        if runtime is None:
            raise ControlError("the daemon is stopping")
        return runtime

    async def handle(self, request: Request, peer_uid: int) -> Response:
        try:
            return await self.handlers[request.command](request, peer_uid)
        except ControlError as exc:
            return Response(ok=False, error=str(exc))

    # --- status -------------------------------------------------------------------

    async def status_report(self) -> StatusReport:
        runtime = self._runtime()
        now = runtime.clock()
        listeners: list[ListenerStatus] = []
        for lst in self.target.listeners:
            if not isinstance(lst, Inspectable):
                continue
            lc = lst.listener_config
            cert = lst.tls_certificate
            listeners.append(
                ListenerStatus(
                    name=lst.name,
                    kind=lc.kind.value,
                    address=_address(lc),
                    tls=lc.tls.value,
                    serving=lst.serving,
                    sessions=len(lst.session_facts()) if isinstance(lst, SessionHolder) else None,
                    certificate=None
                    if cert is None
                    else CertificateStatus(cert.sha256, cert.subject, _iso(cert.not_after)),
                )
            )
        depth: int | None = None
        oldest_age: float | None = None
        rows: int | None = None
        try:
            depth, oldest = await QueueStore(runtime.store).summary()
            oldest_age = None if oldest is None else (now - oldest).total_seconds()
            rows, _ = await runtime.store.audit_head()
        except Exception as exc:  # shown as "?": status still answers
            log.warning("control.status_store_failed", error=repr(exc)[:300])
        refresher = self.target.crl_refresher
        crls = tuple(
            CrlStatus(
                issuer=f.issuer,
                this_update=_iso(f.this_update),
                next_update=None if f.next_update is None else _iso(f.next_update),
                age_seconds=(now - f.this_update).total_seconds(),
                stale=f.stale,
            )
            for f in (refresher.facts() if refresher is not None else ())
        )
        anchor = runtime.store.last_anchor
        issuer = runtime.config.issuer
        issuer_status: IssuerStatus | None = None
        if issuer is not None:
            fresh = runtime.issuer_keys.freshness()
            issuer_status = IssuerStatus(
                issuer=issuer.issuer,
                source=fresh.source,
                keys=len(fresh.key_ids),
                key_ids=fresh.key_ids,
                age_seconds=fresh.age_seconds,
                fetches=fresh.fetches,
                last_error=fresh.last_error,
            )
        started = self.target.started_at
        return StatusReport(
            version=self.version,
            pid=os.getpid(),
            config_file=str(self.target.config_path),
            started_at=_iso(started),
            uptime_seconds=(now - started).total_seconds(),
            listeners=tuple(listeners),
            queue_depth=depth,
            queue_oldest_age_seconds=oldest_age,
            crls=crls,
            audit_rows=rows,
            last_anchor=None
            if anchor is None
            else AnchorStatus(
                ts=anchor.ts,
                seq=anchor.seq,
                hash=anchor.hash,
                reason=anchor.reason,
                file=str(runtime.store.anchor_file),
            ),
            issuer=issuer_status,
        )

    async def _status(self, _request: Request, _uid: int) -> Response:
        return Response(ok=True, result=to_json(await self.status_report()))

    # --- who / kick -----------------------------------------------------------------

    def _holders(self) -> list[SessionHolder]:
        return [lst for lst in self.target.listeners if isinstance(lst, SessionHolder)]

    async def _who(self, _request: Request, _uid: int) -> Response:
        self._runtime()
        sessions = [s for h in self._holders() for s in h.session_facts()]
        return Response(ok=True, result=to_json(WhoReport(sessions_sorted(sessions))))

    async def _kick(self, request: Request, uid: int) -> Response:
        runtime = self._runtime()
        person, box = request.person, request.box
        assert person is not None  # decode_request
        config = runtime.config
        if all(p.id != person for p in config.people):
            raise ControlError(f'unknown person "{person}" (not in {config.path})')
        if box is not None:
            box = box.lower()
            if all(m.address != box for m in config.mailboxes):
                raise ControlError(f'unknown box "{box}" (not in {config.path})')
        imap = smtp = 0
        for holder in self._holders():
            cut = holder.kick(person, box)
            if isinstance(holder, Inspectable) and holder.listener_config.kind.value == "imap":
                imap += cut
            else:
                smtp += cut
        await runtime.store.record(
            SessionsKicked(
                person=person,
                box=box,
                imap_sessions=imap,
                smtp_sessions=smtp,
                by_uid=uid,
                answer="BYE" if imap else ("421" if smtp else None),
            )
        )
        log.info("control.kicked", person=person, box=box, imap=imap, smtp=smtp, by_uid=uid)
        return Response(ok=True, result=to_json(KickReport(person, box, imap, smtp)))

    # --- reload ---------------------------------------------------------------------

    async def _reload(self, _request: Request, _uid: int) -> Response:
        self._runtime()
        report = await self.target.reload()
        if report.applied:
            return Response(ok=True, result=to_json(report))
        return Response(ok=False, result=to_json(report), error="reload refused")

    # --- upstream sync --------------------------------------------------------------

    async def _upstream_sync(self, request: Request, _uid: int) -> Response:
        """Wake the box's loop and wait for the next complete round (replay of the
        local changes, then every folder compared)."""
        self._runtime()
        assert request.box is not None  # decode_request
        box = request.box.lower()
        upstream = self.target.upstream
        sync = None if upstream is None else upstream.boxes.get(box)
        if sync is None:
            raise ControlError(f'"{box}" is not a box hosted at an operator')
        started, wanted = time.monotonic(), sync.rounds + 1
        sync.wake()
        while sync.rounds < wanted:
            # A round that cannot happen (operator unreachable, credential refused)
            # ends the wait with that state instead of the whole timeout.
            if sync.state in ("unreachable", "credentials_refused", "error") and (
                time.monotonic() - started > 3.0
            ):
                break
            try:
                await sync.wait_rounds(wanted, 0.5)
            except TimeoutError:
                if time.monotonic() - started > UPSTREAM_SYNC_MAX_SECONDS:
                    break
        complete = sync.rounds >= wanted
        report = UpstreamSyncReport(
            box=box,
            complete=complete,
            state=sync.state,
            rounds=sync.rounds,
            seconds=time.monotonic() - started,
        )
        if not complete:
            return Response(ok=False, result=to_json(report), error=f"{box}: no complete sync")
        return Response(ok=True, result=to_json(report))


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    _pid, uid, _gid = _UCRED.unpack(raw)
    return int(uid)


class ControlServer:
    """The listening control socket."""

    def __init__(self, path: Path, service: ControlService) -> None:
        self.path = path
        self.service = service
        self._server: asyncio.Server | None = None
        self._inode: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        path = self.path
        try:
            if not path.parent.is_dir():
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            await self._clear_stale()
            with socket_address(path) as address:
                # 0600 from the start (no window where others could connect), then
                # chmod for filesystems that ignore the umask on sockets.
                old = os.umask(0o177)
                try:
                    self._server = await asyncio.start_unix_server(
                        self._serve, path=address, limit=MAX_REQUEST_BYTES + 2
                    )
                finally:
                    os.umask(old)
            os.chmod(path, 0o600)
            self._inode = os.stat(path).st_ino
        except OSError as exc:
            raise StartError(f"control socket {path}: {exc.strerror or exc}") from None
        log.info("control.listening", socket=str(path))

    async def _clear_stale(self) -> None:
        """Remove a socket left by a daemon that died; refuse if one still answers."""
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise StartError(f"control socket {self.path}: exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.setblocking(False)
        try:
            with socket_address(self.path) as address:
                await asyncio.get_running_loop().sock_connect(probe, address)
        except OSError:
            os.unlink(self.path)  # nobody listens: a leftover
            return
        finally:
            probe.close()
        raise StartError(
            f"control socket {self.path}: another mss-relay answers on it "
            "(two daemons on one data directory?)"
        )

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)
        # Only our own socket: a daemon started since may have replaced it.
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            uid = _peer_uid(writer)
            if uid is None or uid not in (os.getuid(), 0):
                log.warning("control.peer_refused", uid=uid)
                writer.write(encode_response(Response(ok=False, error="not the daemon's user")))
                return
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_SECONDS)
                except (TimeoutError, ValueError):  # ValueError: a line over the limit
                    writer.write(encode_response(Response(ok=False, error="no request line")))
                    return
                if not line:
                    return
                started = time.monotonic()
                try:
                    request = decode_request(line.rstrip(b"\r\n"))
                except ProtocolError as exc:
                    writer.write(encode_response(Response(ok=False, error=str(exc))))
                    return
                try:
                    response = await self.service.handle(request, uid)
                except Exception:
                    log.exception("control.command_failed", command=request.command.value)
                    response = Response(ok=False, error="internal error (see the daemon's log)")
                writer.write(encode_response(response))
                await writer.drain()
                log.info(
                    "control.command",
                    command=request.command.value,
                    ok=response.ok,
                    uid=uid,
                    ms=round((time.monotonic() - started) * 1000, 1),
                )
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()
            if task is not None:
                self._tasks.discard(task)
