"""An SMTP listener: one listening socket, its TLS context, and the sessions it serves.

`make_listener(runtime, listener_config)` is what `relay.app` starts for each
``kind = "submission"`` or ``kind = "inbound"`` listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl

import structlog

from relay.config.model import ListenerConfig, ListenerKind, TlsConfig, TlsMode
from relay.control.model import SessionFacts
from relay.identity import sasl_oauth
from relay.runtime import Runtime
from relay.smtp import replies
from relay.smtp.inbound import InboundHandler
from relay.smtp.session import COMMAND_CALL_LIMITS, RelaySession, RelaySMTP
from relay.smtp.submission import SubmissionHandler
from relay.tls.context import CertificateFacts, ListenerContext

log = structlog.get_logger("relay.smtp")


class SmtpListener:
    """One listening socket and the sessions it serves."""

    @property
    def open_sessions(self) -> int:
        """Connections being served now."""
        return len(self._sessions)

    def _admit(self, smtp: RelaySMTP, ip: str) -> str | None:
        """Count a new connection in, or say why not (the limits of the config now)."""
        limits = self.runtime.config.limits
        if len(self._sessions) >= limits.max_connections_per_listener:
            log.warning(
                "smtp.connection_refused",
                listener=self.description,
                peer=ip,
                limit="max_connections_per_listener",
            )
            return replies.LISTENER_FULL.format(limit=limits.max_connections_per_listener)
        if self._per_ip.get(ip, 0) >= limits.max_connections_per_ip:
            log.warning(
                "smtp.connection_refused",
                listener=self.description,
                peer=ip,
                limit="max_connections_per_ip",
            )
            return replies.TOO_MANY_FROM_IP.format(ip=ip, limit=limits.max_connections_per_ip)
        self._sessions[smtp] = ip
        self._since[smtp] = self.runtime.clock()
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        return None

    def _closed(self, smtp: RelaySMTP) -> None:
        ip = self._sessions.pop(smtp, None)
        self._since.pop(smtp, None)
        if ip is None:
            return
        left = self._per_ip[ip] - 1
        if left:
            self._per_ip[ip] = left
        else:
            del self._per_ip[ip]

    def __init__(self, runtime: Runtime, lc: ListenerConfig) -> None:
        self.runtime = runtime
        self.lc = lc
        self._server: asyncio.Server | None = None
        # The sessions with a live connection, for a graceful stop: a session enters
        # when its connection is made and leaves when it is lost (issue 9: they were
        # kept until stop(), 12 kB to 117 kB each, for the life of the daemon).
        self._sessions: dict[RelaySMTP, str] = {}  # session -> client address
        self._per_ip: dict[str, int] = {}
        self._since: dict[RelaySMTP, dt.datetime] = {}  # session -> connected at (`who`)
        # Read at each new connection: `replace_tls` swaps it (fresh CRLs) while open
        # sessions keep the context they started with.
        self._tls: ListenerContext | None = None
        self.probe = runtime.metrics.listener(lc.kind.value, lc.host, lc.port)
        handler_cls = SubmissionHandler if lc.kind is ListenerKind.SUBMISSION else InboundHandler
        self.handler = handler_cls(runtime, lc)

    @property
    def listener_config(self) -> ListenerConfig:
        return self.lc

    @property
    def tls_certificate(self) -> CertificateFacts | None:
        """The certificate new connections are offered (`mss-relay status`)."""
        return self._tls.certificate if self._tls is not None else None

    def session_facts(self) -> list[SessionFacts]:
        """The open sessions (`mss-relay who`)."""
        facts: list[SessionFacts] = []
        for smtp, ip in self._sessions.items():
            state = smtp.session.relay if isinstance(smtp.session, RelaySession) else None
            principal = state.principal if state is not None else None
            ssl_object = smtp.transport.get_extra_info("ssl_object") if smtp.transport else None
            since = self._since.get(smtp) or self.runtime.clock()
            facts.append(
                SessionFacts(
                    protocol="smtp",
                    listener=self.name,
                    person=principal.person_id if principal is not None else None,
                    box=(state.sender_box if state is not None else None)
                    or (principal.as_box if principal is not None else None),
                    client=ip,
                    since=since.astimezone(dt.UTC).isoformat(timespec="seconds"),
                    tls=ssl_object.version() if ssl_object is not None else None,
                )
            )
        return facts

    def kick(self, person: str, box: str | None) -> int:
        """Close `person`'s connections with 421 (RFC 5321 §3.8), those sending as or
        authorised for `box` if given. A message not yet answered 250 is not kept: the
        client sends it again, as after any 421."""
        cut = 0
        for fact, smtp in zip(self.session_facts(), list(self._sessions), strict=True):
            if fact.person != person or (box is not None and fact.box != box):
                continue
            transport = smtp.transport
            if transport is None or transport.is_closing():
                continue
            assert isinstance(transport, asyncio.WriteTransport)
            with contextlib.suppress(Exception):
                transport.write(replies.ascii_reply(replies.KICKED).encode("ascii") + b"\r\n")
            transport.close()
            cut += 1
        return cut

    @property
    def description(self) -> str:
        return (
            f"smtp {self.lc.kind.value} on {self.lc.host}:{self.lc.port} (tls {self.lc.tls.value})"
        )

    def _protocol(self, ctx: ssl.SSLContext | None) -> RelaySMTP:
        config = self.runtime.config
        limits = config.limits
        inbound = self.lc.kind is ListenerKind.INBOUND
        smtp = RelaySMTP(
            self.handler,
            hostname=config.server.hostname,
            ident="mss-relay ESMTP",
            data_size_limit=limits.max_message_bytes,
            enable_SMTPUTF8=True,
            tls_context=ctx if self.lc.tls is TlsMode.STARTTLS else None,
            require_starttls=self.lc.tls is TlsMode.STARTTLS,
            timeout=limits.smtp_command_timeout_seconds,
            auth_required=not inbound,
            auth_require_tls=self.lc.tls is not TlsMode.NONE,
            command_call_limit=COMMAND_CALL_LIMITS,
            loop=asyncio.get_running_loop(),
            probe=self.probe,
            admit=self._admit,
            on_close=self._closed,
            login_timeout_seconds=None if inbound else limits.smtp_login_timeout_seconds,
        )
        if inbound:
            for name in list(smtp._auth_methods):
                smtp._auth_methods.pop(name)
        elif self.lc.tls is TlsMode.NONE or not self.runtime.authenticator.tokens_offered:
            # Bearer tokens only over TLS and only with an issuer (RFC 7628 §5).
            for name in sasl_oauth.MECHANISMS:
                smtp._auth_methods.pop(name, None)
        return smtp

    @property
    def name(self) -> str:
        return self.probe.name

    @property
    def serving(self) -> bool:
        """Whether the socket accepts connections (the health check asks)."""
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        if self.lc.tls is not TlsMode.NONE:
            self._tls = ListenerContext(
                self.runtime.config.tls,
                require_client_certificate=self.lc.require_client_certificate,
            )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: self._protocol(self._tls.current if self._tls else None),
            host=self.lc.host,
            port=self.lc.port,
            ssl=self._tls.current if self._tls and self.lc.tls is TlsMode.IMPLICIT else None,
            reuse_address=True,
        )

    def replace_tls(self, tls: TlsConfig) -> None:
        """Serve new connections with a context built from `tls` (the CRL refresher
        calls this); connections already open are not touched."""
        if self._tls is not None:
            self._tls.replace(tls)

    async def stop(self, grace_seconds: float) -> None:
        if self._server is None:
            return
        self._server.close()
        deadline = asyncio.get_running_loop().time() + grace_seconds
        while self._sessions:
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        for s in list(self._sessions):
            if s.transport is not None:
                with contextlib.suppress(Exception):
                    s.transport.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)


def make_listener(runtime: Runtime, lc: ListenerConfig) -> SmtpListener:
    return SmtpListener(runtime, lc)


__all__ = ["SmtpListener", "make_listener"]
