"""The HTTP listener (edge): ``kind = "http"`` in the config, on aiohttp.

What it serves depends on the listener's ``endpoints``:

- ``metrics``: ``GET /metrics``, the Prometheus text format of the daemon's own
  registry (`relay.metrics`), with the states (queue, CRLs, audit rows, listeners,
  health checks) read just before rendering;
- ``health``: ``GET /healthz``, 200 or 503 with the failing check named
  (`relay.web.health`);
- ``autoconfig``: Thunderbird's ``GET /.well-known/autoconfig/mail/config-v1.1.xml``
  and ``GET /mail/config-v1.1.xml`` (``?emailaddress=``), Outlook's
  ``POST /autodiscover/autodiscover.xml`` (`relay.web.autoconfig`).

Anything else is 404. Request bodies are bounded (an Autodiscover request is a few
hundred bytes), no access log is written (a scrape every few seconds would drown the
journal), and errors never echo internals to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import structlog
from aiohttp import web

from relay.config.model import HttpEndpoint, ListenerConfig, TlsConfig, TlsMode
from relay.metrics import CONTENT_TYPE, Sample, listener_name
from relay.runtime import Listener, Runtime
from relay.store.queue import QueueStore
from relay.tls.context import CertificateFacts, ListenerContext
from relay.web.autoconfig import (
    MAX_AUTODISCOVER_REQUEST_BYTES,
    AutodiscoverError,
    autodiscover_error_xml,
    autodiscover_xml,
    parse_autodiscover_request,
    settings_for,
    thunderbird_xml,
)
from relay.web.health import Check, HealthFacts, evaluate, render

if TYPE_CHECKING:
    from relay.delivery.crl import CrlRefresher

log = structlog.get_logger("relay.web")

# The trivial read of the health check: a database that does not answer a SELECT 1
# within this is down for our purposes.
STORE_PING_TIMEOUT_SECONDS = 5.0
XML = "application/xml"
TEXT = "text/plain"

__all__ = ["DaemonView", "WebListener", "make_listener"]


class DaemonView(Protocol):
    """What the HTTP listener reads from the running daemon."""

    @property
    def listeners(self) -> Sequence[Listener]: ...

    @property
    def crl_refresher(self) -> CrlRefresher | None: ...


class WebListener:
    """One HTTP(S) socket serving the endpoints its config lists."""

    def __init__(self, runtime: Runtime, lc: ListenerConfig, daemon: DaemonView) -> None:
        self.runtime = runtime
        self.lc = lc
        self.daemon = daemon
        self.name = listener_name(lc.kind.value, lc.host, lc.port)
        self._tls: ListenerContext | None = None
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None

    @property
    def listener_config(self) -> ListenerConfig:
        return self.lc

    @property
    def tls_certificate(self) -> CertificateFacts | None:
        return self._tls.certificate if self._tls is not None else None

    @property
    def description(self) -> str:
        served = ", ".join(sorted(self.lc.endpoints))
        return f"http on {self.lc.host}:{self.lc.port} (tls {self.lc.tls.value}; {served})"

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    def app(self) -> web.Application:
        # The largest body we take: an Autodiscover request (everything else is GET).
        app = web.Application(client_max_size=MAX_AUTODISCOVER_REQUEST_BYTES)
        served = self.lc.endpoints
        if HttpEndpoint.METRICS in served:
            app.router.add_get("/metrics", self._metrics)
        if HttpEndpoint.HEALTH in served:
            app.router.add_get("/healthz", self._healthz)
        if HttpEndpoint.AUTOCONFIG in served:
            for path in ("/.well-known/autoconfig/mail/config-v1.1.xml", "/mail/config-v1.1.xml"):
                app.router.add_get(path, self._autoconfig)
            # Outlook asks with either case.
            for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
                app.router.add_post(path, self._autodiscover)
        return app

    async def start(self) -> None:
        if self.lc.tls is TlsMode.IMPLICIT:
            self._tls = ListenerContext(
                self.runtime.config.tls,
                require_client_certificate=self.lc.require_client_certificate,
            )
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        self._runner = runner
        protocol_factory = runner.server
        assert protocol_factory is not None  # set by setup()
        try:
            self._server = await asyncio.get_running_loop().create_server(
                protocol_factory,
                host=self.lc.host,
                port=self.lc.port,
                ssl=self._tls.current if self._tls is not None else None,
                reuse_address=True,
            )
        except BaseException:
            await runner.cleanup()
            self._runner = None
            raise

    def replace_tls(self, tls: TlsConfig) -> None:
        """New CRLs: new connections get the new context (SNI callback swap)."""
        if self._tls is not None:
            self._tls.replace(tls)

    async def stop(self, grace_seconds: float) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner.shutdown(), grace_seconds)
            await runner.cleanup()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    # --- facts ------------------------------------------------------------------------

    async def _health(self) -> tuple[Check, ...]:
        store = self.runtime.store
        error: str | None = None
        try:
            await asyncio.wait_for(store.ping(), STORE_PING_TIMEOUT_SECONDS)
        except TimeoutError:
            error = f"no answer within {STORE_PING_TIMEOUT_SECONDS:.0f} s"
        except Exception as exc:
            error = type(exc).__name__
            log.warning("web.health_store_failed", error=repr(exc)[:300])
        writer = store.writer_state()
        refresher = self.daemon.crl_refresher
        return evaluate(
            HealthFacts(
                store_error=error,
                writer_alive=writer.alive,
                writer_busy_seconds=writer.busy_seconds,
                writer_waiting=writer.waiting,
                crl_files=len(self.runtime.config.tls.crl_files),
                crls=refresher.facts() if refresher is not None else (),
                listeners=[(lst.name, lst.serving) for lst in self.daemon.listeners],
            )
        )

    async def _sample(self) -> Sample:
        store = self.runtime.store
        checks = await self._health()
        depth: int | None = None
        oldest = None
        rows: int | None = None
        try:
            depth, oldest = await QueueStore(store).summary()
            rows, _ = await store.audit_head()
        except Exception as exc:  # the store check says so; the rest still renders
            log.warning("web.metrics_sample_failed", error=repr(exc)[:300])
        refresher = self.daemon.crl_refresher
        return Sample(
            queue_depth=depth,
            queue_oldest=oldest,
            audit_rows=rows,
            crls=refresher.facts() if refresher is not None else (),
            listeners_up=[(lst.name, lst.serving) for lst in self.daemon.listeners],
            checks=[(c.name, c.ok) for c in checks],
            now=self.runtime.clock(),
        )

    # --- handlers ---------------------------------------------------------------------

    async def _metrics(self, _request: web.Request) -> web.Response:
        metrics = self.runtime.metrics
        metrics.apply(await self._sample())
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _healthz(self, _request: web.Request) -> web.Response:
        status, body = render(await self._health())
        return web.Response(status=status, text=body, content_type=TEXT)

    async def _autoconfig(self, request: web.Request) -> web.Response:
        address = request.query.get("emailaddress")
        settings = settings_for(self.runtime.config, address, host=request.host)
        if settings is None:
            return web.Response(status=404, text="no configuration for this address\n")
        return web.Response(body=thunderbird_xml(settings), content_type=XML, charset="utf-8")

    async def _autodiscover(self, request: web.Request) -> web.Response:
        now = self.runtime.clock()
        try:
            address = parse_autodiscover_request(await request.read())
            settings = settings_for(self.runtime.config, address)
            if settings is None:
                raise AutodiscoverError(600, "Invalid Request: not an address of this server")
        except AutodiscoverError as exc:
            # Autodiscover reports errors inside a 200 response (the client reads them).
            return web.Response(
                body=autodiscover_error_xml(exc, now), content_type=XML, charset="utf-8"
            )
        return web.Response(
            body=autodiscover_xml(settings, address), content_type=XML, charset="utf-8"
        )


def make_listener(runtime: Runtime, lc: ListenerConfig, daemon: DaemonView) -> WebListener:
    """The HTTP listener for `relay.app` (kind = "http")."""
    return WebListener(runtime, lc, daemon)
