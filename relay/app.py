"""Composition root and lifecycle: one function that starts everything and stops it.

start: load config → open and migrate the store → control socket → create boxes →
start listeners → READY=1 to systemd. SIGHUP or `mss-relay reload` (the control
socket): reload the config and apply it (`Daemon.reload`: a bad file keeps the old
one). SIGTERM / SIGINT: stop accepting, let in-flight work finish within a grace
period, flush the store, record the stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import socket
import sys
import time
from pathlib import Path

import structlog

from relay import __version__
from relay.audit.events import (
    ConfigChanged,
    ConfigReloaded,
    ConfigReloadRefused,
    DaemonStarted,
    DaemonStopped,
)
from relay.config import ConfigChange, ConfigError, Problem, check_files, diff, load
from relay.config.model import Config, ListenerConfig, ListenerKind, TlsMode
from relay.control.model import ReloadReport
from relay.control.paths import control_socket_path
from relay.control.server import ControlServer, ControlService, Inspectable, StartError
from relay.delivery.crl import CrlRefresher
from relay.delivery.worker import DeliveryWorker
from relay.errors import StoreError
from relay.imap.server import make_listener as imap_listener
from relay.metrics import Metrics
from relay.policy.model import PolicyError, load_policies
from relay.runtime import Listener, ListenerFactory, Runtime
from relay.smtp.listener import make_listener as smtp_listener
from relay.store.rotation import KeyRotator
from relay.store.store import Store
from relay.tls.context import CertificateFacts, TlsError, certificate_facts, server_context
from relay.upstream.sync import UpstreamSync
from relay.web.server import DaemonView
from relay.web.server import make_listener as web_listener

log = structlog.get_logger("relay.app")

VERSION = __version__
SHUTDOWN_GRACE_SECONDS = 10.0
SD_NOTIFY_TIMEOUT_SECONDS = 0.5


def listener_factories(daemon: DaemonView) -> dict[ListenerKind, ListenerFactory]:
    """The listener implementations, by kind. The HTTP listener reads the daemon's
    other listeners and CRL state (health, metrics)."""
    return {
        ListenerKind.SUBMISSION: smtp_listener,
        ListenerKind.INBOUND: smtp_listener,
        ListenerKind.IMAP: imap_listener,
        ListenerKind.HTTP: lambda runtime, lc: web_listener(runtime, lc, daemon),
    }


def sd_notify(message: str) -> bool:
    """Send a notification to systemd (sd_notify(3)) if NOTIFY_SOCKET is set."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        # A datagram socket blocks while the receiver's queue is full: never the event
        # loop for long (systemd reads at once; a stuck reader loses a message).
        sock.settimeout(SD_NOTIFY_TIMEOUT_SECONDS)
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError as exc:
            log.error("daemon.sd_notify_failed", message=message.split("\n")[0], error=str(exc))
            return False
    return True


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as sd_notify's MONOTONIC_USEC wants it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval(env: dict[str, str] | os._Environ[str]) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC, sd_watchdog_enabled(3)),
    or None when the unit sets no watchdog for this process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


def describe_change(c: ConfigChange) -> str:
    """One applied change, as `mss-relay reload` prints it."""
    where = " ".join(x for x in (c.box, c.person) if x)
    return f"{c.kind}{' ' + where if where else ''}: {c.detail}"


class ListenerChangeFailed(Exception):
    """A listener of the new config could not be started (its address is taken...)."""


class Daemon:
    """The running daemon: `start()` brings everything up, `stop()` takes it down.

    `serve()` drives it from signals; tests start it in-process on ephemeral ports.
    """

    def __init__(self, config_path: Path, config: Config) -> None:
        self.config_path = config_path
        self.initial_config = config
        self.runtime: Runtime | None = None
        self.listeners: list[Listener] = []
        self.startup_ms = 0.0
        self.crl_refresher: CrlRefresher | None = None  # fresh CRLs, TLS contexts
        self.worker: DeliveryWorker | None = None  # the outbound queue
        self.upstream: UpstreamSync | None = None  # gateway mode: boxes at an operator
        self.anchoring: asyncio.Task[None] | None = None  # audit head, outside the database
        self.key_rotator: KeyRotator | None = None  # new message keys, re-encryption
        self.control: ControlServer | None = None  # reload, status, who, kick
        self.started_at = dt.datetime.now(dt.UTC)
        self._reload_lock = asyncio.Lock()  # SIGHUP and `mss-relay reload` in turn
        self._draining: set[asyncio.Task[None]] = set()  # listeners a reload removed

    async def start(self) -> Runtime:
        started = time.monotonic()
        config = self.initial_config
        config.server.data_dir.mkdir(parents=True, exist_ok=True)
        # The daemon's first start on an empty store creates the keys (relay.store.keys).
        store = await Store.open(
            config.storage, may_create_keys=True, metrics=Metrics(version=VERSION)
        )
        runtime = Runtime(
            config=config, store=store, policies=load_policies(config.server.policy_dir)
        )
        self.runtime = runtime
        self.started_at = runtime.clock()
        try:
            # First: a second daemon on the same data directory stops here, by name.
            self.control = ControlServer(
                control_socket_path(config.server, os.environ), ControlService(self, VERSION)
            )
            await self.control.start()
            await store.ensure_mailboxes(m.address for m in config.mailboxes)
            factories = listener_factories(self)
            for lc in config.listeners:
                listener = factories[lc.kind](runtime, lc)
                await listener.start()
                self.listeners.append(listener)
            self.crl_refresher = CrlRefresher(runtime, lambda: self.listeners)
            await self.crl_refresher.start()
            runtime.reload_hooks.append(lambda _old, _new: self._wake_crl_refresher())
            self.worker = DeliveryWorker(runtime, self.crl_refresher)
            await self.worker.start()
            self.key_rotator = KeyRotator(store, config.storage, lambda: runtime.config.limits)
            await self.key_rotator.start()
            store.on_queued(self.worker.wake)
            self.upstream = UpstreamSync(
                store,
                lambda: {
                    m.address: m.upstream
                    for m in runtime.config.upstream_boxes()
                    if m.upstream is not None
                },
                minimum_tls_version=lambda: runtime.config.tls.minimum_version,
            )
            await self.upstream.start()
            runtime.reload_hooks.append(lambda _old, _new: self._apply_upstream())
            await store.record(DaemonStarted(version=VERSION, config_file=str(self.config_path)))
            await store.anchor("start")
            self.anchoring = asyncio.create_task(self._anchor_loop(), name="audit-anchors")
        except BaseException:
            await self.stop("start failed")
            raise
        self.startup_ms = (time.monotonic() - started) * 1000
        return runtime

    async def _anchor_loop(self) -> None:
        """Anchor the audit head outside the database every few minutes (the store
        anchors it at stop too: relay.audit.anchors)."""
        while self.runtime is not None:
            await asyncio.sleep(self.runtime.config.limits.audit_anchor_interval_seconds)
            if self.runtime is not None:
                await self.runtime.store.anchor("interval")

    def _apply_upstream(self) -> None:
        """After a reload: loops for boxes newly hosted at an operator (the others
        read their table at each round and end when it is gone)."""
        if self.upstream is not None:
            task = asyncio.ensure_future(self.upstream.apply())
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)

    def _wake_crl_refresher(self) -> None:
        if self.crl_refresher is not None:
            self.crl_refresher.wake()

    # --- reload ---------------------------------------------------------------------

    async def reload(self) -> ReloadReport:
        """Read the config file again and apply it all, or none of it.

        Applied: people, boxes, rights, routes, limits (components read the config at
        each use); certificate, key and CRL files, read again even at unchanged paths
        (a new fingerprint: new connections get the new context, open ones keep
        theirs); listeners added, removed and moved, the others untouched. Refused,
        with every problem, when the file does not load, names missing files, holds
        TLS files OpenSSL refuses or a listener that cannot bind: the running config
        stays. Every difference applied, and every refusal, is audited.
        """
        async with self._reload_lock:
            sd_notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}")
            try:
                return await self._reload()
            finally:
                sd_notify("READY=1\nSTATUS=serving")

    async def _refuse(self, problems: tuple[str, ...]) -> ReloadReport:
        assert self.runtime is not None
        path = str(self.config_path)
        log.error("config.reload_refused", file=path, problems=list(problems))
        await self.runtime.store.record(ConfigReloadRefused(config_file=path, problems=problems))
        return ReloadReport(applied=False, config_file=path, changes=(), problems=problems)

    def _served_certificate(self) -> CertificateFacts | None:
        for lst in self.listeners:
            if isinstance(lst, Inspectable) and lst.tls_certificate is not None:
                return lst.tls_certificate
        return None

    def _tls_problems(self, new: Config) -> list[str]:
        """What OpenSSL says of the new TLS files, before anything is swapped."""
        return [str(p) for p in tls_problems(new)]

    async def _reload(self) -> ReloadReport:
        runtime = self.runtime
        assert runtime is not None
        path = self.config_path
        try:
            new = load(path)
            problems = check_files(new)
            if problems:
                raise ConfigError(tuple(problems))
            policies = load_policies(new.server.policy_dir)
        except (ConfigError, PolicyError) as exc:
            return await self._refuse(tuple(str(p) for p in exc.problems))
        tls_problems = self._tls_problems(new)
        if tls_problems:
            return await self._refuse(tuple(tls_problems))
        old, old_policies = runtime.config, runtime.policies
        changes = diff(old, new)
        served = self._served_certificate()
        fresh = certificate_facts(new.tls.certificate) if new.tls.certificate else None
        if served is not None and fresh is not None and served.sha256 != fresh.sha256:
            changes.append(
                ConfigChange(
                    "certificate_renewed",
                    None,
                    None,
                    f"{new.tls.certificate}: sha256 {served.sha256} -> {fresh.sha256}, "
                    f"expires {fresh.not_after:%Y-%m-%d %H:%M}Z",
                )
            )
        if control_socket_path(new.server, os.environ) != control_socket_path(
            old.server, os.environ
        ):
            log.warning("control.socket_moved", detail="the control socket moves at restart")
        await runtime.store.ensure_mailboxes(m.address for m in new.mailboxes)
        runtime.config, runtime.policies = new, policies
        try:
            await self._apply_listeners(runtime, old, new)
        except ListenerChangeFailed as exc:
            runtime.config, runtime.policies = old, old_policies
            return await self._refuse((f"{path}: {exc}",))
        if self.crl_refresher is not None:
            # Every context rebuilt from the files as they are now (and the new
            # listeners given the context with the refreshed CRLs).
            await self.crl_refresher.reload()
        await runtime.store.record(
            *(
                ConfigChanged(box=c.box, person=c.person, kind=c.kind, detail=c.detail)
                for c in changes
            ),
            ConfigReloaded(config_file=str(path), changes=len(changes)),
        )
        for hook in runtime.reload_hooks:
            hook(old, new)
        log.info("config.reloaded", file=str(path), changes=len(changes))
        return ReloadReport(
            applied=True,
            config_file=str(path),
            changes=tuple(describe_change(c) for c in changes),
            problems=(),
        )

    async def _apply_listeners(self, runtime: Runtime, old: Config, new: Config) -> None:
        """Start the listeners the new config adds, stop those it drops; a moved one is
        both. New addresses are bound before anything is stopped, so a refused bind
        changes nothing; a listener moved onto an address another one leaves is bound
        once that one stopped accepting. Open sessions of a dropped listener finish
        within the grace period (IMAP ones get BYE), in the background."""
        current: dict[ListenerConfig, Listener] = {
            lst.listener_config: lst for lst in self.listeners if isinstance(lst, Inspectable)
        }
        wanted = set(new.listeners)
        removed = [lst for lc, lst in current.items() if lc not in wanted]
        added = [lc for lc in new.listeners if lc not in current]
        if not removed and not added:
            return
        factories = listener_factories(self)
        leaving = {
            (lst.listener_config.host, lst.listener_config.port)
            for lst in removed
            if isinstance(lst, Inspectable)
        }
        started: dict[ListenerConfig, Listener] = {}

        async def bind(lc: ListenerConfig) -> None:
            listener = factories[lc.kind](runtime, lc)
            try:
                await listener.start()
            except (OSError, TlsError) as exc:
                for lst in started.values():
                    await lst.stop(0)
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise ListenerChangeFailed(
                    f"cannot listen on {lc.host}:{lc.port} ({lc.kind.value}): {why}"
                ) from None
            started[lc] = listener

        for lc in added:
            if (lc.host, lc.port) not in leaving:
                await bind(lc)
        for lst in removed:
            task = asyncio.create_task(lst.stop(SHUTDOWN_GRACE_SECONDS), name="listener-drain")
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)
        for _ in range(100):  # stop() closes the listening socket before its first await
            if not any(lst.serving for lst in removed):
                break
            await asyncio.sleep(0)
        try:
            for lc in added:
                if lc not in started:
                    await bind(lc)
        except ListenerChangeFailed:
            # Rare (the address left was taken meanwhile): put the old ones back.
            for lst in removed:
                if not isinstance(lst, Inspectable):
                    continue
                back = lst.listener_config
                again = factories[back.kind](runtime, back)
                try:
                    await again.start()
                except (OSError, TlsError) as exc:
                    log.error("listener.restore_failed", listener=lst.description, error=str(exc))
                    continue
                self.listeners[self.listeners.index(lst)] = again
            raise
        for lst in started.values():
            log.info("listener.started", listener=lst.description)
        for lst in removed:
            log.info("listener.stopped", listener=lst.description)
        kept = [current[lc] if lc in current else started[lc] for lc in new.listeners]
        self.listeners = kept

    async def stop(
        self, reason: str = "stopped", grace_seconds: float = SHUTDOWN_GRACE_SECONDS
    ) -> None:
        anchoring, self.anchoring = self.anchoring, None
        if anchoring is not None:
            anchoring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await anchoring
        control, self.control = self.control, None
        if control is not None:
            await control.stop()
        rotator, self.key_rotator = self.key_rotator, None
        if rotator is not None:
            await rotator.stop()
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            await upstream.stop()
        worker, self.worker = self.worker, None
        if worker is not None:
            await worker.stop(grace_seconds)
        refresher, self.crl_refresher = self.crl_refresher, None
        if refresher is not None:
            await refresher.stop()
        listeners, self.listeners = self.listeners, []
        await asyncio.gather(
            *(lst.stop(grace_seconds) for lst in reversed(listeners)),
            *self._draining,
            return_exceptions=True,
        )
        runtime, self.runtime = self.runtime, None
        if runtime is None:
            return
        with contextlib.suppress(Exception):
            await runtime.store.record(DaemonStopped(reason=reason))
        await runtime.issuer_keys.close()
        await runtime.store.close()


def _start_watchdog(runtime: Runtime) -> asyncio.Task[None] | None:
    """WATCHDOG=1 every half WATCHDOG_USEC while the event loop turns and the store's
    writer lives: a wedged loop or a dead writer lets systemd restart the daemon."""
    interval = watchdog_interval(os.environ)
    if interval is None:
        return None

    async def ping() -> None:
        while True:
            if runtime.store.writer_state().alive:
                sd_notify("WATCHDOG=1")
            else:
                log.error("daemon.watchdog_withheld", reason="the store writer is not running")
            await asyncio.sleep(interval)

    return asyncio.create_task(ping(), name="watchdog")


def tls_problems(config: Config) -> list[Problem]:
    """What OpenSSL says of the TLS files the listeners will load (a file that exists
    but holds no certificate, a key that does not match it): the contexts are built
    as the listeners build them, and thrown away."""
    flags = {lc.require_client_certificate for lc in config.listeners if lc.tls is not TlsMode.NONE}
    try:
        for require in sorted(flags):
            server_context(config.tls, require_client_certificate=require)
        if config.tls.certificate is not None:
            certificate_facts(config.tls.certificate)
    except TlsError as exc:
        return [Problem(str(config.path), "tls", str(exc))]
    return []


def load_for_serving(config_path: Path) -> Config:
    """Load the config and check what serving needs of it: the files it names exist
    and are readable, OpenSSL accepts the TLS ones, the policies load. `serve` and
    `check-config` both call this, so they refuse the same files."""
    config = load(config_path)
    problems = check_files(config)
    try:
        load_policies(config.server.policy_dir)
    except PolicyError as exc:
        problems.extend(exc.problems)
    if not problems:  # a missing file would be reported twice
        problems.extend(tls_problems(config))
    if problems:
        raise ConfigError(tuple(problems))
    return config


def run_serve(config_path: Path) -> int:
    """`serve` on uvloop's event loop (libuv: the loop's own work, socket writes and
    timers in C; bench/README has what it gave), or on asyncio's own when uvloop is
    not installed (a platform without its wheels)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(config_path))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(config_path))


async def serve(config_path: Path) -> int:
    """Run the daemon until SIGTERM/SIGINT. Returns the process exit status."""
    try:
        config = load_for_serving(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    daemon = Daemon(config_path, config)
    try:
        runtime = await daemon.start()
    except (StoreError, StartError, TlsError) as exc:
        # A missing or wrong key, an unreachable database, a control socket in use, a
        # TLS file changed since the check: say why, no traceback.
        print(f"mss-relay: cannot start: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A port in use or below 1024 without the capability: asyncio's message names
        # the address ("error while attempting to bind on address ..."). Exit 1, not
        # 2: the port may be free again soon, so systemd's Restart= may try again.
        print(f"mss-relay: cannot start: {exc}", file=sys.stderr)
        return 1
    for listener in daemon.listeners:
        print(f"mss-relay: listening: {listener.description}", flush=True)
    stop = asyncio.Event()
    reload_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
    log.info(
        "daemon.ready", listeners=len(daemon.listeners), startup_ms=round(daemon.startup_ms, 1)
    )
    print(f"mss-relay: ready in {daemon.startup_ms:.0f} ms (config {config_path})", flush=True)
    sd_notify("READY=1\nSTATUS=serving")
    watchdog = _start_watchdog(runtime)
    reason = "signal"
    try:
        while not stop.is_set():
            waiters = {
                asyncio.create_task(stop.wait()),
                asyncio.create_task(reload_requested.wait()),
            }
            _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if reload_requested.is_set() and not stop.is_set():
                reload_requested.clear()
                await daemon.reload()  # logged and audited, applied or refused
    except BaseException:
        reason = "error"
        log.exception("daemon.failed")
        raise
    finally:
        if watchdog is not None:
            watchdog.cancel()
        sd_notify("STOPPING=1")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        log.info("daemon.stopping")
        await daemon.stop(reason)
        log.info("daemon.stopped")
    return 0
