"""The SMTP protocol object on aiosmtpd: our session state, DATA reader, AUTH
mechanisms, pipelined replies and the one exception reply.

The aiosmtpd quirks DESIGN.md names are handled here: with implicit TLS `session.ssl`
is None (we read the transport's ssl_object); its PLAIN drops the authorization
identity and its authenticator is synchronous (we override `auth_PLAIN`/`auth_LOGIN`
and verify in a thread); its error reply echoes exception text (`handle_exception`
answers 451 4.3.0 with a reference instead). DATA is read by our own `smtp_DATA`: one
growing buffer instead of a list of lines (memory), bare CR/LF refused (SMTP
smuggling), the idle timer reset while data flows.

What a listener's rules are (submission, inbound) lives in the handlers; this module
only calls them through `Hooks`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import inspect
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import aiosmtpd.smtp
from aiosmtpd.smtp import (
    CALL_LIMIT_DEFAULT,
    SMTP,
    AuthResult,
    Session,
    _AuthMechAttr,
    login_always_fail,
)

from relay.identity.auth import Principal
from relay.metrics import CommandResult, ListenerProbe
from relay.smtp import replies
from relay.smtp.dataread import DotReader
from relay.smtp.headers import DOT_ATOM, LDH_DOMAIN
from relay.tls.peer import PeerCertificate, peer_from_ssl_object

# Per-session command budgets (aiosmtpd `command_call_limit`): generous for real
# clients, a wall for loops. MAIL is per message, so a long session may send many.
COMMAND_CALL_LIMITS: dict[str, int] = {
    "*": 20_000,
    "EHLO": 10,
    "HELO": 10,
    "STARTTLS": 2,
    "AUTH": 10,
    "NOOP": 100,
    "VRFY": 5,
    "HELP": 5,
    "EXPN": 5,
}


# RFC 4954 §4: an AUTH command line (with its initial response), and each SASL
# response line, may be up to 12288 octets: access tokens (OAUTHBEARER, XOAUTH2) are
# kilobytes long. Other commands keep aiosmtpd's limits.
AUTH_LINE_BYTES = 12288

# A reverse- or forward-path whose mailbox is a dot-atom at a plain domain name
# (RFC 5321 §4.1.2), what nearly every MAIL and RCPT carries: read by this pattern
# instead of the email package's header parser that aiosmtpd's `_getaddr` uses (~8% of
# the event loop under one-connection-per-message load, py-spy). Anything else (quoted
# local parts, address literals, source routes, <>) still goes to aiosmtpd's parser;
# tests/smtp/test_session_init.py checks both give the same answer.
_PLAIN_PATH = re.compile(rf"<({DOT_ATOM})@({LDH_DOMAIN})>(?=$|[ \t])", re.ASCII)

# DATA is read this much at a time at most (what the socket has given is taken whole).
DATA_READ_BYTES = 256 * 1024

# Replies after which the client waits for us: never held back (see RelaySMTP.push).
_FLUSH_NOW = frozenset({b"220", b"221", b"235", b"334", b"354", b"421", b"535", b"454"})

_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_aiosmtpd_sanitized_log = aiosmtpd.smtp.sanitized_log


def _sanitized_log_when_enabled(
    func: Callable[..., None], msg: Any, *args: Any, **kwargs: Any
) -> None:
    """aiosmtpd's `sanitized_log`, asked first whether the logger writes at that level.

    aiosmtpd's command loop calls it twice for each line it reads (at DEBUG and INFO),
    and it hides the credentials of an AUTH line with a regex before it hands the
    line to the logger, whatever the logger's level: "mail.log" is at ERROR here
    (relay.logsetup), so that work was thrown away (~1 % of the loop under
    one-connection-per-message load, py-spy). With the level enabled, aiosmtpd's own
    function runs, hiding included (tests/smtp/test_session_init.py)."""
    logger = getattr(func, "__self__", None)
    level = _LOG_LEVELS.get(getattr(func, "__name__", ""))
    if isinstance(logger, logging.Logger) and level is not None and not logger.isEnabledFor(level):
        return
    _aiosmtpd_sanitized_log(func, msg, *args, **kwargs)


# aiosmtpd's command loop finds it as a global of its module.
aiosmtpd.smtp.sanitized_log = _sanitized_log_when_enabled


@dataclass
class TlsFacts:
    version: str | None = None
    cipher: str | None = None
    peer: PeerCertificate | None = None


@dataclass
class SessionState:
    """What we know of a session beyond aiosmtpd's Session."""

    peer_ip: str
    tls: TlsFacts = field(default_factory=TlsFacts)
    principal: Principal | None = None
    sender_box: str | None = None  # submission: the box MAIL FROM named
    # submission: the AUTH success event handed to the writer (Store.record_soon)
    login_recorded: asyncio.Future[None] | None = None


class RelaySession(Session):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        # Filled in by connection_made; aiosmtpd calls the STARTTLS hook on a fresh
        # session before our connection_made has run.
        self.relay = SessionState(peer_ip="")

    # aiosmtpd sets the deprecated `login_data` on every AUTH and logs a warning each
    # time; we keep the principal in `relay` and ignore it.
    @property
    def login_data(self) -> Any:
        return None

    @login_data.setter
    def login_data(self, value: Any) -> None:
        pass


def _tls_facts(transport: asyncio.BaseTransport | None) -> TlsFacts:
    if transport is None:
        return TlsFacts()
    obj = transport.get_extra_info("ssl_object")
    if not isinstance(obj, ssl.SSLObject | ssl.SSLSocket):
        return TlsFacts()
    cipher = obj.cipher()
    return TlsFacts(
        version=obj.version(),
        cipher=cipher[0] if cipher else None,
        peer=peer_from_ssl_object(obj),
    )


class Hooks(Protocol):
    """What `RelaySMTP` asks of the handler beyond aiosmtpd's own `handle_*` hooks."""

    @property
    def max_line_bytes(self) -> int: ...

    async def handle_exception(self, error: Exception, server: RelaySMTP | None = None) -> str: ...

    # Not named auth_*: aiosmtpd takes every handler method named auth_<x> for a SASL
    # mechanism <x> and advertises it (EHLO said "AUTH ... external password").
    async def authenticate_password(
        self, server: RelaySMTP, mechanism: str, login: str, password: str, authzid: str | None
    ) -> AuthResult: ...

    async def authenticate_external(self, server: RelaySMTP, authzid: str | None) -> AuthResult: ...

    async def authenticate_token(
        self, server: RelaySMTP, mechanism: str, message: bytes
    ) -> AuthResult: ...

    async def refused_data(self, server: RelaySMTP, reply: str) -> None: ...

    def login_timed_out(self, server: RelaySMTP) -> None:
        """The login timeout ended a session that had not authenticated."""
        ...

    async def refused_session(
        self, server: RelaySMTP, *, stage: str, reply: str, rule: str
    ) -> None:
        """A refusal that ends the session (before any message)."""
        ...


@dataclass(frozen=True)
class _DispatchNames:
    """The attribute names aiosmtpd's `SMTP.__init__` finds by introspection."""

    auth: tuple[tuple[str, str, bool], ...]  # (mechanism, attribute, on the protocol)
    hooks: tuple[str, ...]  # handle_* of the handler
    smtp: tuple[str, ...]  # smtp_* of the protocol
    ehlo_version: str | None


_DISPATCH_NAMES: dict[tuple[type, type], _DispatchNames] = {}


def _dispatch_names(protocol_cls: type, handler: Any) -> _DispatchNames:
    """Found as aiosmtpd finds them (same rules, same order), once per pair of
    classes: our protocol and handler classes gain no attribute per instance."""
    key = (protocol_cls, type(handler))
    found = _DISPATCH_NAMES.get(key)
    if found is not None:
        return found
    auth: dict[str, tuple[str, str, bool]] = {}
    for obj, builtin in ((protocol_cls, True), (handler, False)):
        for name, member in inspect.getmembers(obj):
            if name.startswith("auth_"):
                mechanism = getattr(
                    member, "__auth_mechanism_name__", name.replace("auth_", "").replace("__", "-")
                )
                auth[mechanism] = (mechanism, name, builtin)
    hooks = tuple(m for m in dir(handler) if m.startswith("handle_"))
    ehlo = getattr(handler, "handle_EHLO", None)
    version = None
    if ehlo is not None:
        count = len(inspect.signature(ehlo).parameters)
        version = {4: "old", 5: "new"}.get(count)
        if version is None:
            raise RuntimeError("Unsupported EHLO Hook")
    smtp = tuple(m for m in dir(protocol_cls) if m.startswith("smtp_"))
    found = _DispatchNames(tuple(auth.values()), hooks, smtp, version)
    _DISPATCH_NAMES[key] = found
    return found


class _CountingMethods(dict[str, Any]):
    """aiosmtpd's command table; each command it dispatches (`get`) is counted by the
    listener's probe with its final reply."""

    def __init__(self, smtp: RelaySMTP, probe: ListenerProbe, methods: dict[str, Any]) -> None:
        super().__init__(methods)
        self._smtp = smtp
        self._probe = probe

    def get(self, name: str, default: Any = None) -> Any:
        method = super().get(name)
        if method is None:
            return default
        return self._smtp._counting(self._probe, name, method)


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP with our DATA reader, AUTH mechanisms and reply codes."""

    # aiosmtpd sizes its StreamReader with this: the longest line we read at all, an
    # AUTH line (RFC 4954 §4). Command lines are then bounded by `command_size_limits`
    # and DATA lines by the config (RFC 5321 §4.5.3.1.6: 1000 octets with CRLF).
    line_length_limit = AUTH_LINE_BYTES + 2

    def __init__(
        self,
        handler: Hooks,
        *,
        probe: ListenerProbe | None = None,
        admit: Callable[[RelaySMTP, str], str | None] | None = None,
        on_close: Callable[[RelaySMTP], None] | None = None,
        login_timeout_seconds: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.relay_handler = handler
        self._pending_replies: list[bytes] = []
        self._probe = probe
        self._counted = False  # connection_made runs again after STARTTLS
        self._last_code: int | None = None  # of the last reply pushed
        # The listener's bookkeeping (see SmtpListener): asked to admit the connection
        # once it is really there (after the handshake on implicit TLS: a failed
        # handshake never reaches connection_made), answered with a refusal or None;
        # told when it is gone, so it never holds a dead one.
        self._admit = admit
        self._on_close = on_close
        self._refused = False  # by `admit`: aiosmtpd never saw this connection
        self._lost = False
        # Submission: the whole time from connecting to a successful AUTH.
        self._login_timeout_seconds = login_timeout_seconds
        self._login_timer: asyncio.TimerHandle | None = None
        self._smtp_init(handler, **kwargs)
        # aiosmtpd keeps these limits in a class attribute shared by every instance;
        # ours are per session.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self.command_size_limits["AUTH"] = AUTH_LINE_BYTES
        # Only the mechanisms this class implements (auth_PLAIN, auth_LOGIN,
        # auth_EXTERNAL, auth_OAUTHBEARER, auth_XOAUTH2): never one aiosmtpd found by
        # name on the handler.
        self._auth_methods = {
            name: impl for name, impl in self._auth_methods.items() if impl.is_builtin
        }
        if probe is not None:
            # Every command aiosmtpd dispatches, counted once with its final reply
            # (AUTH's 334 and DATA's 354 are intermediate). The names come from our
            # own methods, never from the peer. Wrapped when dispatched, not here:
            # most sessions use five of the twenty commands.
            self._smtp_methods = _CountingMethods(self, probe, self._smtp_methods)

    def _smtp_init(
        self,
        handler: Any,
        *,
        data_size_limit: int | None,
        enable_SMTPUTF8: bool,
        hostname: str,
        ident: str,
        tls_context: ssl.SSLContext | None,
        require_starttls: bool,
        timeout: float,
        auth_required: bool,
        auth_require_tls: bool,
        command_call_limit: dict[str, int],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """What aiosmtpd's `SMTP.__init__` does for the arguments our listeners pass,
        less its per-connection introspection: it calls `inspect.getmembers` on the
        protocol and the handler and `dir()` on both for every connection (~10% of the
        event loop under one-connection-per-message load, py-spy); here the names are
        found once per (protocol class, handler class) and only bound per connection.
        Its warnings about our deliberate choices (a CERT_REQUIRED context for
        inbound, AUTH without TLS on a loopback listener) are not repeated per
        connection. `tests/smtp/test_session_init.py` checks that the result equals
        aiosmtpd's own `__init__`, so an aiosmtpd upgrade that changes it fails there.
        """
        self.__ident__ = ident
        self.loop = loop
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(loop=loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected,
            loop=loop,
        )
        self.event_handler = handler
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = False
        self.hostname = hostname
        self.tls_context = tls_context
        self.require_starttls = tls_context and require_starttls
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._idle_deadline = 0.0  # see _reset_timeout
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = auth_require_tls
        self._proxy_timeout = None
        self._auth_callback = login_always_fail
        self._authenticator = None
        self._auth_required = auth_required
        names = _dispatch_names(type(self), handler)
        self._auth_methods = {
            mechanism: _AuthMechAttr(getattr(self if builtin else handler, attr), builtin)
            for mechanism, attr, builtin in names.auth
        }
        self._handle_hooks = {name[7:]: getattr(handler, name) for name in names.hooks}
        self._ehlo_hook_ver = names.ehlo_version
        self._smtp_methods = {name[5:]: getattr(self, name) for name in names.smtp}
        self._enforce_call_limit = True
        self._call_limit_base = command_call_limit
        self._call_limit_default = command_call_limit.get("*", CALL_LIMIT_DEFAULT)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        found = _PLAIN_PATH.match(arg)
        rest = arg[found.end() :].lstrip(" \t") if found is not None else ""
        if found is None or rest.startswith("("):
            return super()._getaddr(arg)
        local, domain = found.groups()
        if self.local_part_limit and len(local) > self.local_part_limit:
            return None, None
        return f"{local}@{domain}", rest

    def _counting(self, probe: ListenerProbe, name: str, method: Any) -> Any:
        async def run(arg: str) -> None:
            self._last_code = None
            try:
                await method(arg)
            except Exception:
                probe.command(name, CommandResult.ERROR)
                raise
            probe.command(name, CommandResult.of_smtp(self._last_code))

        return run

    # --- session and TLS --------------------------------------------------------

    def _create_session(self) -> Session:
        return RelaySession(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        starttls_done = self._original_transport is not None
        if not starttls_done and self._admit is not None:
            peer = transport.get_extra_info("peername")
            refusal = self._admit(self, peer[0] if isinstance(peer, tuple) else str(peer))
            self._admit = None
            if refusal is not None:
                # Refused before aiosmtpd starts the session: the reply instead of the
                # greeting (RFC 5321 §3.1: 421 then close is allowed there).
                self._refused = True
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(replies.ascii_reply(refusal).encode("ascii") + b"\r\n")
                transport.close()
                return
        super().connection_made(transport)
        if not starttls_done:
            if self._probe is not None and not self._counted:
                self._counted = True
                self._probe.opened()
            if self._login_timeout_seconds:
                self._login_timer = self.loop.call_later(
                    self._login_timeout_seconds, self._login_expired
                )
        session = self.session
        assert isinstance(session, RelaySession)
        peer = session.peer
        ip = peer[0] if isinstance(peer, tuple) else str(peer)
        session.relay = SessionState(peer_ip=ip, tls=_tls_facts(self.transport))
        if session.relay.tls.version is not None and self._tls_protocol is None:
            # Implicit TLS (port 465): aiosmtpd only knows STARTTLS and would neither
            # advertise nor accept AUTH; the connection is encrypted, so allow it.
            self._auth_require_tls = False

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        result: bool | None = super().eof_received()
        return result

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._lost:
            # aiosmtpd calls this itself after a failed STARTTLS handshake, and the
            # transport calls it again: the first call did the work.
            return
        self._lost = True
        if self._probe is not None and self._counted:
            self._counted = False
            self._probe.closed()
        try:
            super().connection_lost(error)
        finally:
            # Replies still held for a pipelining client have nobody to go to.
            self._pending_replies.clear()
            on_close, self._on_close = self._on_close, None
            if self._login_timer is not None:
                self._login_timer.cancel()
                self._login_timer = None
            if on_close is not None:
                on_close(self)
            task = self._handler_coroutine
            if task is None or task.done():
                self._release()
            else:
                task.add_done_callback(self._release)

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd's idle timer (RFC 5321 §4.5.3.2.7), reset before every command: the
        deadline moves, and a timer of the loop is made only when none is due by then.
        aiosmtpd cancels it and makes a new one each time (twice per command: ~2 % of
        the loop under one-connection-per-message load); ours, when it fires before
        the deadline, waits again for the rest."""
        self._idle_deadline = self.loop.time() + (duration or self._timeout_duration)
        handle = self._timeout_handle
        if handle is None or self._idle_deadline < handle.when():
            if handle is not None:
                handle.cancel()
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_check)

    def _idle_check(self) -> None:
        if self.loop.time() < self._idle_deadline:
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_check)
            return
        # The fired handle stays: aiosmtpd's connection_lost cancels it, and wants one.
        self._timeout_cb()  # type: ignore[no-untyped-call]

    def _login_expired(self) -> None:
        """RFC 5321 §4.5.3.2 bounds each wait, not a session: a client that never
        authenticates is ended after the login timeout, however busy it keeps us."""
        self._login_timer = None
        session = self.session
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if session is not None and session.authenticated:
            return
        self.relay_handler.login_timed_out(self)
        reply = replies.LOGIN_TIMEOUT.format(seconds=self._login_timeout_seconds)
        out = b"".join(self._pending_replies) + reply.encode("ascii") + b"\r\n"
        self._pending_replies.clear()
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(out)
        transport.close()

    def _release(self, _: object = None) -> None:
        """Break the reference cycles aiosmtpd builds (bound methods in its dispatch
        tables, the StreamWriter and its protocol, the finished handler task and its
        traceback) so that a closed session, its read buffer and its envelope are
        freed when the connection ends, not at the next full garbage collection."""
        self._smtp_methods = {}
        self._auth_methods = {}
        self._handle_hooks = {}
        self._handler_coroutine = None
        self._client_connected_cb = None
        self._writer = None  # type: ignore[assignment]
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        self.envelope = None

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            data = replies.ascii_reply(replies.enhance(status)).encode("ascii")
        else:
            data = status
        if data[:3].isdigit():
            self._last_code = int(data[:3])
        self._pending_replies.append(data + b"\r\n")
        # RFC 2920 §3.1: a pipelining client has sent the next commands already; answer
        # them in one write instead of one packet per reply. Only while a whole command
        # line is buffered (so the reply is never held while we wait for the client),
        # and never for replies after which the client must wait (220 before TLS, 354,
        # 334 challenges, 221/421 before closing).
        # A line of a multi-line reply ("250-...") is held until its last line also
        # with nothing buffered: the client reads on to that line (RFC 5321 §4.2.1),
        # so EHLO's lines are one write, not one each.
        buffered = self._reader._buffer  # type: ignore[attr-defined]
        continued = data[3:4] == b"-" and b"\n" not in data
        pipelined = data[:3] not in _FLUSH_NOW and b"\n" in buffered
        if (continued or pipelined) and len(self._pending_replies) < 64:
            return
        out = b"".join(self._pending_replies)
        self._pending_replies.clear()
        if self._writer is None or self.transport is None or self.transport.is_closing():
            # The client has gone (or we are closing): commands it pipelined before it
            # left are still being read, their replies have nobody to go to. Writing
            # to a TLS transport in that state raises (asyncio's sslproto).
            return
        self._writer.write(out)
        await self._writer.drain()

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd routes here too; keep one implementation, in the handler.
        return await self.relay_handler.handle_exception(error, self)

    # --- STARTTLS (RFC 3207) -----------------------------------------------------

    async def smtp_STARTTLS(self, arg: str) -> None:
        session = self.session
        assert isinstance(session, RelaySession)
        if session.relay.tls.version is not None or self._tls_protocol is not None:
            # RFC 3207 §4.2: STARTTLS is not offered once TLS is up (after STARTTLS or
            # on implicit TLS); a client asking again is out of sequence.
            await self.push(replies.TLS_ALREADY_ACTIVE)
            return
        leftover = len(self._reader._buffer)  # type: ignore[attr-defined]
        if not arg and self.tls_context and leftover:
            # RFC 3207 §4.2 (and CVE-2011-0411): what a client sent after STARTTLS
            # in clear must not run after the handshake. Discard it and end the
            # session now: the client is waiting for replies to those commands, not
            # starting a handshake, and would hold the connection until a timeout.
            self._reader._buffer.clear()  # type: ignore[attr-defined]
            await self.relay_handler.refused_session(
                self,
                stage="starttls",
                reply=replies.PIPELINED_AFTER_STARTTLS,
                rule="starttls.pipelined",
            )
            await self.push(replies.PIPELINED_AFTER_STARTTLS)
            assert self.transport is not None
            self.transport.close()
            return
        await super().smtp_STARTTLS(arg)

    # --- AUTH (RFC 4954) ----------------------------------------------------------

    async def _auth_password(self, mechanism: str, login: bytes, password: bytes, authzid: bytes):  # type: ignore[no-untyped-def]
        return await self.relay_handler.authenticate_password(
            self,
            mechanism,
            login.decode("utf-8", "replace"),
            password.decode("utf-8", "replace"),
            authzid.decode("utf-8", "replace") or None,
        )

    async def _initial_response(self, args: list[str]) -> bytes | None:
        """The client's first SASL message: inline (RFC 4954 §4) or after an empty 334.
        None when it could not be read (the reply is already sent)."""
        if len(args) == 1:
            blob = await self.challenge_auth("")
            return blob if isinstance(blob, bytes) else None
        if args[1] == "=":
            return b""  # RFC 4954 §4: "=" is an empty initial response
        try:
            return base64.b64decode(args[1].encode(), validate=True)
        except (binascii.Error, ValueError):
            await self.push("501 5.5.2 Cannot decode base64")
            return None

    async def smtp_AUTH(self, arg: str) -> None:
        # SASL mechanism names are upper case (RFC 4422 §3.1); accept a client that
        # writes them otherwise, as Postfix does, instead of a 504 for "auth plain".
        if arg:
            mechanism, sep, rest = arg.strip().partition(" ")
            arg = mechanism.upper() + sep + rest
        await super().smtp_AUTH(arg)
        if self._login_timer is not None and self.session and self.session.authenticated:
            self._login_timer.cancel()
            self._login_timer = None

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        # RFC 4616: message = [authzid] NUL authcid NUL passwd
        blob = await self._initial_response(args)
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\0")
        if len(parts) != 3 or not parts[1]:
            await self.push("501 5.5.2 PLAIN needs [authzid] NUL login NUL password")
            return AuthResult(success=False, handled=True)
        authzid, login, password = parts
        result: AuthResult = await self._auth_password("PLAIN", login, password, authzid)
        return result

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
            if not isinstance(login, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                login = base64.b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await self.push("501 5.5.2 Cannot decode base64")
                return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        result: AuthResult = await self._auth_password("LOGIN", login, password, b"")
        return result

    async def auth_EXTERNAL(self, _: Any, args: list[str]) -> AuthResult:
        # RFC 4422 Appendix A: the optional response is the authorization identity.
        authzid = ""
        if len(args) == 2 and args[1] != "=":
            try:
                authzid = base64.b64decode(args[1].encode(), validate=True).decode()
            except (binascii.Error, ValueError):
                await self.push("501 5.5.2 Cannot decode base64")
                return AuthResult(success=False, handled=True)
        result: AuthResult = await self.relay_handler.authenticate_external(self, authzid or None)
        return result

    async def auth_OAUTHBEARER(self, _: Any, args: list[str]) -> AuthResult:
        # RFC 7628 §3.1 (the listener removes it when no issuer is configured)
        return await self._auth_bearer("OAUTHBEARER", args)

    async def auth_XOAUTH2(self, _: Any, args: list[str]) -> AuthResult:
        return await self._auth_bearer("XOAUTH2", args)

    async def _auth_bearer(self, mechanism: str, args: list[str]) -> AuthResult:
        session = self.session
        assert isinstance(session, RelaySession)
        if session.relay.tls.version is None and self._tls_protocol is None:
            # RFC 7628 §5: bearer tokens only over TLS.
            await self.push("538 5.7.11 Encryption required for requested authentication mechanism")
            return AuthResult(success=False, handled=True)
        blob = await self._initial_response(args)
        if blob is None:
            return AuthResult(success=False, handled=True)
        result: AuthResult = await self.relay_handler.authenticate_token(self, mechanism, blob)
        return result

    # --- DATA (RFC 5321 §4.1.1.4, §4.5.2) -----------------------------------------

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        reader = DotReader(
            max_line_bytes=self.relay_handler.max_line_bytes,
            max_message_bytes=self.data_size_limit or 0,
        )
        since_reset = 0
        while True:
            chunk = await self._reader.read(DATA_READ_BYTES)
            if not chunk:
                return  # connection closed mid-DATA: nothing is stored
            since_reset += len(chunk)
            if since_reset > 1 << 20:  # keep a slow but steady upload alive
                self._reset_timeout()
                since_reset = 0
            after = reader.feed(chunk)
            if after is not None:
                break
        if after:
            # What the client pipelined after the end line (RFC 2920): its next
            # commands, read by aiosmtpd from the stream's buffer as usual.
            self._reader._buffer[:0] = after  # type: ignore[attr-defined]
        self._reset_timeout()
        problem = reader.problem
        if problem is not None:
            await self.relay_handler.refused_data(self, problem)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(problem)
            return
        buf = reader.content
        # The buffer itself, not a copy: a 25 MB message must not cost 50 MB here.
        self.envelope.original_content = cast(bytes, buf)
        self.envelope.content = self.envelope.original_content
        del buf
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)
