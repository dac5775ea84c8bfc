"""Composition root and lifecycle: one function that starts everything and stops it.

start: load config → open and migrate the store → create boxes → start listeners →
READY=1 to systemd. SIGHUP: reload the config (a bad file keeps the old one). SIGTERM /
SIGINT: stop accepting, let in-flight work finish within a grace period, flush the
store, record the stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

import structlog

from relay.audit.events import (
    ConfigChanged,
    ConfigReloaded,
    ConfigReloadRefused,
    DaemonStarted,
    DaemonStopped,
)
from relay.config import ConfigError, check_files, diff, load
from relay.config.model import Config, ListenerKind
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
from relay.web.server import DaemonView
from relay.web.server import make_listener as web_listener

log = structlog.get_logger("relay.app")

VERSION = "0.1.0"
SHUTDOWN_GRACE_SECONDS = 10.0


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
        sock.connect(address)
        sock.sendall(message.encode())
    return True


async def reload_config(runtime: Runtime, path: Path) -> bool:
    """Load `path`; on success swap it in and audit every difference."""
    try:
        new = load(path)
        problems = check_files(new)
        if problems:
            raise ConfigError(tuple(problems))
        policies = load_policies(new.server.policy_dir)
    except (ConfigError, PolicyError) as exc:
        texts = tuple(str(p) for p in exc.problems)
        log.error("config.reload_refused", file=str(path), problems=list(texts))
        await runtime.store.record(ConfigReloadRefused(config_file=str(path), problems=texts))
        return False
    old = runtime.config
    changes = diff(old, new)
    await runtime.store.ensure_mailboxes(m.address for m in new.mailboxes)
    await runtime.store.record(
        *(ConfigChanged(box=c.box, person=c.person, kind=c.kind, detail=c.detail) for c in changes),
        ConfigReloaded(config_file=str(path), changes=len(changes)),
    )
    runtime.config = new
    runtime.policies = policies
    for hook in runtime.reload_hooks:
        hook(old, new)
    log.info("config.reloaded", file=str(path), changes=len(changes))
    return True


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
        self.anchoring: asyncio.Task[None] | None = None  # audit head, outside the database
        self.key_rotator: KeyRotator | None = None  # new message keys, re-encryption

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
        try:
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

    def _wake_crl_refresher(self) -> None:
        if self.crl_refresher is not None:
            self.crl_refresher.wake()

    async def reload(self) -> bool:
        assert self.runtime is not None
        return await reload_config(self.runtime, self.config_path)

    async def stop(
        self, reason: str = "stopped", grace_seconds: float = SHUTDOWN_GRACE_SECONDS
    ) -> None:
        anchoring, self.anchoring = self.anchoring, None
        if anchoring is not None:
            anchoring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await anchoring
        rotator, self.key_rotator = self.key_rotator, None
        if rotator is not None:
            await rotator.stop()
        worker, self.worker = self.worker, None
        if worker is not None:
            await worker.stop(grace_seconds)
        refresher, self.crl_refresher = self.crl_refresher, None
        if refresher is not None:
            await refresher.stop()
        listeners, self.listeners = self.listeners, []
        await asyncio.gather(
            *(lst.stop(grace_seconds) for lst in reversed(listeners)), return_exceptions=True
        )
        runtime, self.runtime = self.runtime, None
        if runtime is None:
            return
        with contextlib.suppress(Exception):
            await runtime.store.record(DaemonStopped(reason=reason))
        await runtime.issuer_keys.close()
        await runtime.store.close()


def load_for_serving(config_path: Path) -> Config:
    """Load the config and check that its files exist (serving needs them)."""
    config = load(config_path)
    problems = check_files(config)
    try:
        load_policies(config.server.policy_dir)
    except PolicyError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(tuple(problems))
    return config


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
    except StoreError as exc:
        # A missing or wrong key, an unreachable database: say why, no traceback.
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
                sd_notify("RELOADING=1")
                await reload_config(runtime, config_path)
                sd_notify("READY=1")
    except BaseException:
        reason = "error"
        log.exception("daemon.failed")
        raise
    finally:
        sd_notify("STOPPING=1")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        log.info("daemon.stopping")
        await daemon.stop(reason)
        log.info("daemon.stopped")
    return 0
