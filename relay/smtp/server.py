"""SMTP listeners on aiosmtpd: submission (practice software, mail clients) and inbound
(other MSSanté operators, mutual TLS).

The aiosmtpd quirks DESIGN.md names are handled here: with implicit TLS `session.ssl`
is None (we read the transport's ssl_object); its PLAIN drops the authorization
identity and its authenticator is synchronous (we override `auth_PLAIN`/`auth_LOGIN`
and verify in a thread); its error reply echoes exception text (`handle_exception`
answers 451 4.3.0 with a reference instead). DATA is read by our own `smtp_DATA`: one
growing buffer instead of a list of lines (memory), bare CR/LF refused (SMTP
smuggling), the idle timer reset while data flows.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import secrets
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import structlog
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session, TLSSetupException
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.audit.events import (
    AuthFailed,
    AuthSucceeded,
    ConversationChanged,
    MessageAccepted,
    MessageRefused,
)
from relay.config.model import ListenerConfig, ListenerKind, TlsConfig, TlsMode
from relay.delivery.routing import Unroutable
from relay.delivery.worker import resolve_recipient
from relay.errors import AuthenticationFailed, PermissionDenied, TemporarilyLocked
from relay.identity.auth import Principal
from relay.ins import InsError, parse_patient_address
from relay.message.analysis import analyse
from relay.message.received import received_header
from relay.policy import patient
from relay.policy.sending import may_send_as
from relay.policy.xdm import find_xdm_patients
from relay.smtp import replies
from relay.smtp.headers import HeaderBlock
from relay.store import conversations
from relay.store.store import Acceptance, TxContext
from relay.tls.context import ListenerContext
from relay.tls.peer import PeerCertificate, dn_equal, peer_from_ssl_object

if TYPE_CHECKING:
    from relay.app import Runtime

log = structlog.get_logger("relay.smtp")

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


# Replies after which the client waits for us: never held back (see RelaySMTP.push).
_FLUSH_NOW = frozenset({b"220", b"221", b"235", b"334", b"354", b"421", b"535", b"454"})


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


def _patients(envelope: Envelope) -> dict[str, str]:
    """The patients (INS → address) this envelope goes to; reset with the envelope."""
    found: dict[str, str] | None = getattr(envelope, "relay_patients", None)
    if found is None:
        found = {}
        setattr(envelope, "relay_patients", found)  # noqa: B010 - aiosmtpd's own class
    return found


def _declared_size(mail_options: list[str]) -> int | None:
    for option in mail_options:
        if option.upper().startswith("SIZE="):
            value = option[5:]
            return int(value) if value.isdigit() else None
    return None


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP with our DATA reader, AUTH mechanisms and reply codes."""

    def __init__(self, handler: BaseHandler, **kwargs: Any) -> None:
        self.relay_handler = handler
        self._pending_replies: list[bytes] = []
        super().__init__(handler, **kwargs)

    # --- session and TLS --------------------------------------------------------

    def _create_session(self) -> Session:
        return RelaySession(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        session = self.session
        assert isinstance(session, RelaySession)
        peer = session.peer
        ip = peer[0] if isinstance(peer, tuple) else str(peer)
        session.relay = SessionState(peer_ip=ip, tls=_tls_facts(self.transport))
        if session.relay.tls.version is not None and self._tls_protocol is None:
            # Implicit TLS (port 465): aiosmtpd only knows STARTTLS and would neither
            # advertise nor accept AUTH; the connection is encrypted, so allow it.
            self._auth_require_tls = False

    async def push(self, status: Any) -> None:
        data = replies.enhance(status) if isinstance(status, str) else status
        if isinstance(data, str):
            data = data.encode("utf-8")
        self._pending_replies.append(data + b"\r\n")
        # RFC 2920 §3.1: a pipelining client has sent the next commands already; answer
        # them in one write instead of one packet per reply. Only while a whole command
        # line is buffered (so the reply is never held while we wait for the client),
        # and never for replies after which the client must wait (220 before TLS, 354,
        # 334 challenges, 221/421 before closing).
        buffered = self._reader._buffer  # type: ignore[attr-defined]
        if data[:3] not in _FLUSH_NOW and b"\n" in buffered and len(self._pending_replies) < 64:
            return
        out = b"".join(self._pending_replies)
        self._pending_replies.clear()
        assert self._writer is not None
        self._writer.write(out)
        await self._writer.drain()

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd routes here too; keep one implementation, in the handler.
        return await self.relay_handler.handle_exception(error, self)

    # --- AUTH (RFC 4954) ----------------------------------------------------------

    async def _auth_password(self, mechanism: str, login: bytes, password: bytes, authzid: bytes):  # type: ignore[no-untyped-def]
        return await self.relay_handler.auth_password(
            self,
            mechanism,
            login.decode("utf-8", "replace"),
            password.decode("utf-8", "replace"),
            authzid.decode("utf-8", "replace") or None,
        )

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        # RFC 4616: message = [authzid] NUL authcid NUL passwd
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = base64.b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await self.push("501 5.5.2 Cannot decode base64")
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
        result: AuthResult = await self.relay_handler.auth_external(self, authzid or None)
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
        limit = self.data_size_limit or 0
        max_line = self.relay_handler.max_line_bytes
        buf = bytearray()
        problem: str | None = None
        since_reset = 0
        while self.transport is not None:
            try:
                line = await self._reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as exc:
                # A line longer than the stream limit: drain it, refuse at the end.
                problem = problem or replies.LINE_TOO_LONG.format(limit=max_line)
                await self._reader.read(exc.consumed)
                buf.clear()
                continue
            except asyncio.IncompleteReadError:
                return  # connection closed mid-DATA: nothing is stored
            if line == b".\r\n":
                break
            since_reset += len(line)
            if since_reset > 1 << 20:  # keep a slow but steady upload alive
                self._reset_timeout()
                since_reset = 0
            if problem is not None:
                continue
            if len(line) > max_line:
                problem = replies.LINE_TOO_LONG.format(limit=max_line)
                buf.clear()
                continue
            body = line[:-2]
            if b"\n" in body or b"\r" in body:
                # "\n.\r\n" and friends: SMTP smuggling. Only CRLF.CRLF ends DATA here,
                # and a message holding a bare line ending is refused whole.
                problem = replies.BARE_LINE_ENDING
                buf.clear()
                continue
            if line[:1] == b".":
                line = line[1:]  # dot-stuffing, RFC 5321 §4.5.2
            buf += line
            if limit and len(buf) > limit:
                problem = replies.TOO_BIG.format(limit=limit)
                buf.clear()
        self._reset_timeout()
        if problem is not None:
            await self.relay_handler.refused_data(self, problem)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(problem)
            return
        # The buffer itself, not a copy: a 25 MB message must not cost 50 MB here.
        self.envelope.original_content = cast(bytes, buf)
        self.envelope.content = self.envelope.original_content
        del buf
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)


class BaseHandler:
    """Hooks shared by submission and inbound."""

    protocol = "smtp"

    def __init__(self, runtime: Runtime, listener: ListenerConfig) -> None:
        self.runtime = runtime
        self.listener = listener

    @property
    def max_line_bytes(self) -> int:
        return self.runtime.config.limits.max_line_bytes

    async def handle_EHLO(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        lines = [r[4:] for r in responses if not r.endswith("HELP")]
        lines = [ln for ln in lines if self.advertise(server, ln)]
        lines += ["PIPELINING", "ENHANCEDSTATUSCODES"]  # RFC 2920, RFC 2034
        return [f"250-{ln}" for ln in lines[:-1]] + [f"250 {lines[-1]}"]

    def advertise(self, server: RelaySMTP, capability: str) -> bool:
        return True

    async def auth_password(
        self, server: RelaySMTP, mechanism: str, login: str, password: str, authzid: str | None
    ) -> AuthResult:
        return AuthResult(success=False, handled=False, message="503 5.5.1 AUTH not offered here")

    async def auth_external(self, server: RelaySMTP, authzid: str | None) -> AuthResult:
        return AuthResult(success=False, handled=False, message="503 5.5.1 AUTH not offered here")

    async def handle_exception(self, error: Exception, server: RelaySMTP | None = None) -> str:
        """Every unexpected error: a reference for the logs, never its text for the peer."""
        session = server.session if server is not None else None
        if isinstance(error, TLSSetupException) and isinstance(session, RelaySession):
            # The handshake failed: untrusted CA, expired or revoked certificate, no
            # certificate where one is required, or a protocol mismatch.
            cause = error.__cause__
            reason = getattr(cause, "verify_message", None) or getattr(cause, "reason", None)
            if isinstance(reason, str) and reason.isupper():
                reason = reason.replace("_", " ").lower()  # PEER_DID_NOT_RETURN_A_CERTIFICATE
            await self.audit_refusal(
                session,
                stage="tls",
                reason=f"TLS handshake failed: {reason or 'unknown'}",
                rule="tls.handshake",
            )
            return "554 5.7.0 TLS handshake failed"
        ref = secrets.token_hex(6)
        log.error("smtp.exception", ref=ref, error_type=type(error).__name__, exc_info=error)
        return replies.LOCAL_ERROR.format(ref=ref)

    async def refused_data(self, server: RelaySMTP, reply: str) -> None:
        session = server.session
        assert isinstance(session, RelaySession)
        envelope = server.envelope
        await self.audit_refusal(
            session,
            stage="data",
            reason=reply,
            sender=envelope.mail_from if envelope else None,
        )

    async def audit_refusal(
        self,
        session: RelaySession,
        *,
        stage: str,
        reason: str,
        sender: str | None = None,
        recipient: str | None = None,
        rule: str | None = None,
    ) -> None:
        state = session.relay
        principal = state.principal
        await self.runtime.store.record(
            MessageRefused(
                person=principal.person_id if principal else None,
                box=state.sender_box,
                peer=state.peer_ip,
                protocol=self.protocol,
                stage=stage,
                reason=reason,
                sender=sender,
                recipient=recipient,
                certificate_subject=state.tls.peer.subject if state.tls.peer else None,
                rule=rule,
                answer=reason,
            )
        )

    async def handle_RCPT(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        assert isinstance(session, RelaySession)
        limit = self.runtime.config.limits.max_recipients
        if len(envelope.rcpt_tos) >= limit:
            return replies.TOO_MANY_RECIPIENTS.format(limit=limit)
        reply, rule = await self.check_recipient(session, envelope, address)
        if reply is not None:
            await self.audit_refusal(
                session,
                stage="rcpt",
                reason=reply,
                sender=envelope.mail_from,
                recipient=address,
                rule=rule,
            )
            return reply
        # Local boxes are stored lower-cased; remote addresses travel as written.
        local = _domain(address) in self.runtime.config.server.local_domains
        envelope.rcpt_tos.append(address.lower() if local else address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient ok"

    async def check_recipient(
        self, session: RelaySession, envelope: Envelope, address: str
    ) -> tuple[str | None, str]:
        """(None, "") to accept RCPT; else the reply and the rule's name."""
        raise NotImplementedError

    def classify_recipient(self, address: str) -> tuple[str, str | None]:
        """('local', None) / ('remote', None) / ('refused', reply)."""
        config = self.runtime.config
        domain = _domain(address)
        if domain in config.server.local_domains:
            if config.mailbox(address) is None:
                return "refused", replies.UNKNOWN_BOX.format(address=address)
            return "local", None
        return "remote", None

    async def accept(
        self,
        server: RelaySMTP,
        *,
        raw: bytes | bytearray,
        local: list[str],
        remote: list[str],
        person: str | None,
        box: str | None,
        protocol_name: str,
        extra: Callable[[AsyncConnection, TxContext], Awaitable[None]] | None = None,
    ) -> str:
        session = server.session
        envelope = server.envelope
        assert isinstance(session, RelaySession) and envelope is not None
        state = session.relay
        config = self.runtime.config
        queue_id = secrets.token_hex(8)  # the same id in Received: and in the 250 reply
        trace = received_header(
            from_helo=session.host_name or "unknown",
            from_ip=state.peer_ip,
            by_host=config.server.hostname,
            protocol=protocol_name,
            tls_version=state.tls.version,
            cipher=state.tls.cipher,
            recipient=envelope.rcpt_tos[0] if len(envelope.rcpt_tos) == 1 else None,
            queue_id=queue_id,
            authenticated_as=None,
            now=self.runtime.clock(),
        )
        # One buffer for the whole message: the trace is inserted in front in place
        # (RFC 5321 §4.4: Received: at the top), and the store frees it once sealed.
        message = raw if isinstance(raw, bytearray) else bytearray(raw)
        message[0:0] = trace
        meta = analyse(bytes(message))
        message_id = meta.message_id
        sender = envelope.mail_from or ""
        rcpts = tuple(envelope.rcpt_tos)
        peer_subject = state.tls.peer.subject if state.tls.peer else None

        def event(queue_id: str) -> MessageAccepted:
            return MessageAccepted(
                person=person,
                box=box,
                peer=state.peer_ip,
                protocol=self.protocol,
                message_id=message_id,
                sender=sender,
                recipients=rcpts,
                size_bytes=len(message),
                queue_id=queue_id,
                request=f"MAIL FROM:<{sender}> ({len(rcpts)} RCPT)",
                answer="250 2.0.0",
                certificate_subject=peer_subject,
            )

        result = await self.runtime.store.accept(
            Acceptance(
                raw=message,
                meta=meta.to_json(),
                sender=sender,
                local_recipients=tuple(local),
                remote_recipients=tuple(remote),
                message_id=message_id,
                audit=event,
                person=person,
                box=box,
                in_same_transaction=extra,
                queue_id=queue_id,
            )
        )
        return replies.OK_QUEUED.format(queue_id=result.queue_id)


class SubmissionHandler(BaseHandler):
    """Port 587/465: authenticated practice software and mail clients (RFC 6409)."""

    protocol = "smtp-submission"

    async def auth_password(
        self, server: RelaySMTP, mechanism: str, login: str, password: str, authzid: str | None
    ) -> AuthResult:
        session = server.session
        assert isinstance(session, RelaySession)
        try:
            principal = await self.runtime.authenticator.password(
                login=login, password=password, authzid=authzid, peer=session.relay.peer_ip
            )
        except (AuthenticationFailed, PermissionDenied, TemporarilyLocked) as exc:
            return await self._auth_failed(session, mechanism, login, exc)
        return await self._auth_ok(session, mechanism, login, principal)

    async def auth_external(self, server: RelaySMTP, authzid: str | None) -> AuthResult:
        session = server.session
        assert isinstance(session, RelaySession)
        cert = session.relay.tls.peer
        if cert is None:
            exc = AuthenticationFailed(
                "No client certificate", smtp="535 5.7.8 EXTERNAL needs a client certificate"
            )
            return await self._auth_failed(session, "EXTERNAL", None, exc)
        try:
            self.runtime.authenticator.check_not_locked(session.relay.peer_ip, None)
            principal = self.runtime.authenticator.certificate(cert.fingerprint_sha256, authzid)
        except (AuthenticationFailed, PermissionDenied, TemporarilyLocked) as exc:
            return await self._auth_failed(session, "EXTERNAL", None, exc)
        return await self._auth_ok(session, "EXTERNAL", principal.person.login, principal)

    async def _auth_ok(
        self, session: RelaySession, mechanism: str, login: str, principal: Principal
    ) -> AuthResult:
        session.relay.principal = principal
        await self.runtime.store.record(
            AuthSucceeded(
                person=principal.person_id,
                box=principal.as_box,
                peer=session.relay.peer_ip,
                protocol="smtp",
                mechanism=mechanism,
                login=login,
                answer="235 2.7.0",
            )
        )
        return AuthResult(success=True, auth_data=principal)

    async def _auth_failed(
        self, session: RelaySession, mechanism: str, login: str | None, exc: Exception
    ) -> AuthResult:
        reply = getattr(exc, "smtp", replies.LOCAL_ERROR)
        await self.runtime.store.record(
            AuthFailed(
                peer=session.relay.peer_ip,
                protocol="smtp",
                mechanism=mechanism,
                login=login,
                reason=getattr(exc, "log_detail", None) or str(exc),
                answer=reply,
            )
        )
        return AuthResult(success=False, handled=False, message=reply)

    def check_patient_recipient(self, envelope: Envelope, address: str) -> tuple[str | None, str]:
        """RCPT to <INS>@patient domain: a valid INS, one patient, a size that fits."""
        policy = self.runtime.policies.patient
        ins, decision = patient.patient_of(policy, address)
        if decision.allowed and ins is not None:
            decision = patient.one_patient(policy, _patients(envelope), ins)
            declared = _declared_size(envelope.mail_options)
            if decision.allowed and declared is not None:
                decision = patient.size(policy, declared)
        if not decision.allowed:
            return decision.reply, decision.rule
        if ins is not None:
            _patients(envelope)[ins.matricule] = address
        return None, ""

    async def check_patient_message(
        self,
        session: RelaySession,
        envelope: Envelope,
        raw: bytes | bytearray,
        headers: HeaderBlock,
    ) -> str | Callable[[AsyncConnection, TxContext], Awaitable[None]]:
        """End of DATA for patient mail: size, the XDM's patient; then the conversation
        change that goes into the acceptance's transaction."""
        policy = self.runtime.policies.patient
        patients = _patients(envelope)
        decision = patient.size(policy, len(raw))
        if decision.allowed:
            data = bytes(raw)
            finding = find_xdm_patients(
                data, analyse(data), max_metadata_bytes=policy.max_xdm_metadata_bytes
            )
            del data
            decision = patient.xdm(policy, finding, patients)
        if not decision.allowed:
            await self.audit_refusal(
                session,
                stage="data",
                reason=decision.reply,
                sender=envelope.mail_from,
                recipient=",".join(patients.values()),
                rule=decision.rule,
            )
            return decision.reply
        subjects = headers.values("Subject")
        close = patient.closes(
            policy, headers.values(policy.closing_header), subjects[0] if subjects else None
        )
        box = session.relay.sender_box
        principal = session.relay.principal
        assert box is not None and principal is not None
        message_ids = headers.values("Message-ID")
        message_id = message_ids[0] if message_ids else None
        now = self.runtime.clock()

        async def record(conn: AsyncConnection, ctx: TxContext) -> None:
            for ins in sorted(patients):
                change = await conversations.record(
                    conn,
                    box=box,
                    ins=ins,
                    now=now,
                    message_id=message_id,
                    close=close,
                    opened_by="professional",
                )
                ctx.audit(
                    ConversationChanged(
                        person=principal.person_id,
                        box=box,
                        ins=ins,
                        change=change,
                        by="professional",
                        message_id=message_id,
                    )
                )

        return record

    async def handle_MAIL(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        assert isinstance(session, RelaySession)
        principal = session.relay.principal
        if principal is None:
            return replies.NEED_AUTH
        if not address or address == "<>":
            reply = "550 5.7.1 A null sender is for delivery reports only"
            await self.audit_refusal(session, stage="mail", reason=reply, rule="send-as.null")
            return reply
        verdict = may_send_as(
            self.runtime.config,
            principal.person,
            address,
            self.runtime.today(),
            session_box=principal.as_box,
        )
        if not verdict.allowed:
            await self.audit_refusal(
                session, stage="mail", reason=verdict.reply, sender=address, rule=verdict.rule
            )
            return verdict.reply
        assert verdict.box is not None
        session.relay.sender_box = verdict.box.address
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender ok"

    async def check_recipient(
        self, session: RelaySession, envelope: Envelope, address: str
    ) -> tuple[str | None, str]:
        reply, rule = self.check_patient_recipient(envelope, address)
        if reply is not None:
            return reply, rule
        kind, reply = self.classify_recipient(address)
        rule = "recipient.unknown-box"
        if kind == "remote":
            # Refuse now what no route reaches, not days later by DSN (issue 5).
            route = await resolve_recipient(self.runtime.store, self.runtime.config.routes, address)
            if isinstance(route, Unroutable):
                reply, rule = route.reply, "recipient.no-route"
        return reply, rule

    async def handle_DATA(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(session, RelaySession) and envelope.original_content is not None
        state = session.relay
        principal = state.principal
        assert principal is not None and state.sender_box is not None
        config = self.runtime.config
        headers = HeaderBlock.parse(envelope.original_content)
        # RFC 6409 §8: the MSA may complete a message. From: must be a box the person
        # may send as, like the envelope sender.
        from_addresses = headers.addresses("From")
        if not from_addresses:
            headers.add("From", f"<{state.sender_box}>")
            from_addresses = [state.sender_box]
        for addr in from_addresses:
            verdict = may_send_as(
                config,
                principal.person,
                addr,
                self.runtime.today(),
                session_box=principal.as_box,
            )
            if not verdict.allowed:
                reply = verdict.reply.replace("550 5.7.1 ", "550 5.7.1 From: ", 1)
                await self.audit_refusal(
                    session,
                    stage="data",
                    reason=reply,
                    sender=envelope.mail_from,
                    rule=verdict.rule,
                )
                return reply
        box = config.mailbox(state.sender_box)
        assert box is not None
        if box.owner != principal.person_id:
            # RFC 5322 §3.6.2: the agent who sent the message on behalf of the box.
            own = [
                m.address
                for m in config.mailboxes
                if m.owner == principal.person_id and m.type.value == "PER"
            ]
            name = principal.person.display_name.replace('"', "'")
            headers.replace("Sender", f'"{name}" <{own[0] if own else state.sender_box}>')
        if not headers.has("Message-ID"):
            headers.add("Message-ID", f"<{secrets.token_hex(12)}@{config.server.hostname}>")
        if not headers.has("Date"):
            headers.add("Date", email.utils.format_datetime(self.runtime.clock().astimezone()))
        raw = bytearray(headers.render())
        raw += headers.body
        headers.body = b""  # release the view: the received buffer can go now
        envelope.original_content = envelope.content = None
        local: list[str] = []
        remote: list[str] = []
        for rcpt in envelope.rcpt_tos:
            kind, _ = self.classify_recipient(rcpt)
            (local if kind == "local" else remote).append(rcpt.lower() if kind == "local" else rcpt)
        protocol_name = "ESMTPSA" if state.tls.version else "ESMTPA"
        extra = None
        if _patients(envelope):
            outcome = await self.check_patient_message(session, envelope, raw, headers)
            if isinstance(outcome, str):
                return outcome
            extra = outcome
        return await self.accept(
            server,
            raw=raw,
            local=local,
            remote=remote,
            person=principal.person_id,
            box=state.sender_box,
            protocol_name=protocol_name,
            extra=extra,
        )


class InboundHandler(BaseHandler):
    """Port 25: other MSSanté operators, STARTTLS and a trusted client certificate."""

    protocol = "smtp-inbound"

    def advertise(self, server: RelaySMTP, capability: str) -> bool:
        return not capability.startswith("AUTH")

    async def handle_MAIL(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        assert isinstance(session, RelaySession)
        cert = session.relay.tls.peer
        if session.relay.tls.version is None:
            return "530 5.7.0 Must issue a STARTTLS command first"
        if cert is None:
            await self.audit_refusal(
                session,
                stage="mail",
                reason=replies.NO_CERTIFICATE,
                sender=address,
                rule="trust.no-certificate",
            )
            return replies.NO_CERTIFICATE
        reply, rule = await self.check_trust_space(address, cert)
        if reply is not None:
            await self.audit_refusal(session, stage="mail", reason=reply, sender=address, rule=rule)
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender ok"

    async def check_trust_space(
        self, sender: str, cert: PeerCertificate
    ) -> tuple[str | None, str | None]:
        store = self.runtime.store
        if not sender or sender == "<>":
            # A delivery report: no domain to check; the certificate must be one the
            # trust space lists for some operator.
            dns = await store.trust_space_dns()
            if any(dn_equal(dn, cert.subject) for dn in dns if dn):
                return None, None
            return (
                f"550 5.7.1 Certificate {cert.subject} is not listed in the MSSanté trust space",
                "trust.null-sender-unknown-certificate",
            )
        domain = _domain(sender)
        entry = await store.trust_space_lookup(domain)
        rules = self.runtime.policies.mssante
        if entry is None and not rules.inbound_requires_listed_domain:
            return None, None
        if entry is None:
            return (
                f"550 5.7.1 Sender domain {domain} is not in the MSSanté trust space",
                "trust.domain-not-listed",
            )
        expected_dn = entry.certificate_dn
        if (
            expected_dn
            and rules.inbound_requires_matching_dn
            and not dn_equal(expected_dn, cert.subject)
        ):
            return (
                f"550 5.7.1 Certificate subject does not match the trust space entry for {domain}",
                "trust.dn-mismatch",
            )
        return None, None

    async def check_recipient(
        self, session: RelaySession, envelope: Envelope, address: str
    ) -> tuple[str | None, str]:
        kind, reply = self.classify_recipient(address)
        if kind == "remote":
            return replies.RELAY_DENIED.format(address=address), "recipient.relay-denied"
        if reply is not None:
            return reply, "recipient.unknown-box"
        return await self.check_patient_sender(envelope, address)

    async def handle_DATA(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        assert envelope.original_content is not None
        raw, envelope.original_content = envelope.original_content, None
        return await self.accept(
            server,
            raw=raw,
            local=list(envelope.rcpt_tos),
            remote=[],
            person=None,
            box=None,
            protocol_name="ESMTPS",
            extra=self.patient_reply_recorder(envelope),
        )

    async def check_patient_sender(
        self, envelope: Envelope, box_address: str
    ) -> tuple[str | None, str]:
        """Mail from a patient: only a reply inside an open conversation, or a first
        message to a pharmacy's box (MSSANTE.md, patient messaging)."""
        policy = self.runtime.policies.patient
        ins, decision = patient.patient_of(policy, envelope.mail_from or "")
        if not decision.allowed:
            return decision.reply.replace("5.1.3", "5.1.7", 1), decision.rule
        if ins is None:
            return None, ""
        box = self.runtime.config.mailbox(box_address)
        assert box is not None  # classify_recipient found it
        found = await conversations.get(self.runtime.store, box.address, ins.matricule)
        decision = patient.patient_may_write(policy, box, ins, found.state if found else None)
        return (None, "") if decision.allowed else (decision.reply, decision.rule)

    def patient_reply_recorder(
        self, envelope: Envelope
    ) -> Callable[[AsyncConnection, TxContext], Awaitable[None]] | None:
        policy = self.runtime.policies.patient
        try:
            ins = parse_patient_address(envelope.mail_from or "", policy.domain)
        except InsError:
            return None
        if ins is None:
            return None
        boxes = list(envelope.rcpt_tos)
        now = self.runtime.clock()
        headers = HeaderBlock.parse(envelope.original_content or b"")
        message_ids = headers.values("Message-ID")
        message_id = message_ids[0] if message_ids else None

        async def record(conn: AsyncConnection, ctx: TxContext) -> None:
            for box in boxes:
                change = await conversations.record(
                    conn,
                    box=box,
                    ins=ins.matricule,
                    now=now,
                    message_id=message_id,
                    close=False,
                    opened_by="patient",
                )
                ctx.audit(
                    ConversationChanged(
                        box=box,
                        ins=ins.matricule,
                        change=change,
                        by="patient",
                        message_id=message_id,
                    )
                )

        return record


class SmtpListener:
    """One listening socket and the sessions it serves."""

    def __init__(self, runtime: Runtime, lc: ListenerConfig) -> None:
        self.runtime = runtime
        self.lc = lc
        self._server: asyncio.Server | None = None
        self._sessions: set[RelaySMTP] = set()
        # Read at each new connection: `replace_tls` swaps it (fresh CRLs) while open
        # sessions keep the context they started with.
        self._tls: ListenerContext | None = None
        handler_cls = SubmissionHandler if lc.kind is ListenerKind.SUBMISSION else InboundHandler
        self.handler = handler_cls(runtime, lc)

    @property
    def description(self) -> str:
        return (
            f"smtp {self.lc.kind.value} on {self.lc.host}:{self.lc.port} (tls {self.lc.tls.value})"
        )

    def _protocol(self, ctx: ssl.SSLContext | None) -> RelaySMTP:
        config = self.runtime.config
        limits = config.limits
        inbound = self.lc.kind is ListenerKind.INBOUND
        smtp = _SmtpWithLimits(
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
        )
        if inbound:
            for name in list(smtp._auth_methods):
                smtp._auth_methods.pop(name)
        self._sessions.add(smtp)
        return smtp

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
        while any(s.transport is not None for s in self._sessions):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
            self._sessions = {s for s in self._sessions if s.transport is not None}
        for s in self._sessions:
            if s.transport is not None:
                with contextlib.suppress(Exception):
                    s.transport.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)


class _SmtpWithLimits(RelaySMTP):
    # RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with CRLF. aiosmtpd sizes
    # its StreamReader with this; DATA lines are then checked against the config.
    line_length_limit = 1001


def make_listener(runtime: Runtime, lc: ListenerConfig) -> SmtpListener:
    return SmtpListener(runtime, lc)


__all__ = ["SmtpListener", "make_listener"]
