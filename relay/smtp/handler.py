"""What submission and inbound share: EHLO, RCPT with its limits, refusal audit, the
exception reply, and `accept` (trace header, analysis, the durable acceptance that
comes before 250)."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

import structlog
from aiosmtpd.smtp import AuthResult, Envelope, Session, TLSSetupException
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.audit.events import MessageAccepted, MessageRefused
from relay.config.model import ListenerConfig
from relay.message.analysis import analyse
from relay.message.received import received_header
from relay.runtime import Runtime
from relay.smtp import replies
from relay.smtp.session import RelaySession, RelaySMTP
from relay.store.store import Acceptance, TxContext

log = structlog.get_logger("relay.smtp")


def envelope_patients(envelope: Envelope) -> dict[str, str]:
    """The patients (INS → address) this envelope goes to; reset with the envelope."""
    found: dict[str, str] | None = getattr(envelope, "relay_patients", None)
    if found is None:
        found = {}
        setattr(envelope, "relay_patients", found)  # noqa: B010 - aiosmtpd's own class
    return found


NULL_REVERSE_PATH = "<>"  # how aiosmtpd hands over MAIL FROM:<> (RFC 5321 §4.5.5)


def reverse_path(envelope: Envelope) -> str:
    """The envelope sender, "" for the null reverse-path (what the store, the queue
    and the audit trail keep: the delivery client sends it back as MAIL FROM:<>)."""
    sender = envelope.mail_from or ""
    return "" if sender == NULL_REVERSE_PATH else sender


def declared_size(mail_options: list[str]) -> int | None:
    for option in mail_options:
        if option.upper().startswith("SIZE="):
            value = option[5:]
            return int(value) if value.isdigit() else None
    return None


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


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

    async def authenticate_password(
        self, server: RelaySMTP, mechanism: str, login: str, password: str, authzid: str | None
    ) -> AuthResult:
        return AuthResult(success=False, handled=False, message="503 5.5.1 AUTH not offered here")

    async def authenticate_external(self, server: RelaySMTP, authzid: str | None) -> AuthResult:
        return AuthResult(success=False, handled=False, message="503 5.5.1 AUTH not offered here")

    async def authenticate_token(
        self, server: RelaySMTP, mechanism: str, message: bytes
    ) -> AuthResult:
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

    def login_timed_out(self, server: RelaySMTP) -> None:
        session = server.session
        peer = session.relay.peer_ip if isinstance(session, RelaySession) else None
        log.warning("smtp.login_timeout", peer=peer, listener=self.listener.port)

    async def refused_session(
        self, server: RelaySMTP, *, stage: str, reply: str, rule: str
    ) -> None:
        session = server.session
        assert isinstance(session, RelaySession)
        log.warning("smtp.session_refused", peer=session.relay.peer_ip, stage=stage, rule=rule)
        await self.audit_refusal(session, stage=stage, reason=reply, rule=rule)

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
        local = domain_of(address) in self.runtime.config.server.local_domains
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
        domain = domain_of(address)
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
        request_note: str | None = None,
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
        meta = analyse(message)  # the buffer itself: no copy of a big message
        # Taken now: the store empties `message` once sealed, before the audit event is
        # built (issue 9: every message.accepted said size_bytes=0).
        size = len(message)
        message_id = meta.message_id
        sender = reverse_path(envelope)
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
                size_bytes=size,
                queue_id=queue_id,
                request=f"MAIL FROM:<{sender}> ({len(rcpts)} RCPT)"
                + (f", {request_note}" if request_note else ""),
                answer="250 2.0.0",
                certificate_subject=peer_subject,
            )

        # The login event (handed to the writer at AUTH) is not awaited here: the
        # store commits it with this message or before it, never the message alone
        # (Acceptance.after), so the first message costs one commit, not two.
        login = state.login_recorded
        if login is not None and login.done():
            if login.exception() is not None:
                await login  # its failure, as before the message
            login = state.login_recorded = None
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
                after=login,
            )
        )
        return replies.OK_QUEUED.format(queue_id=result.queue_id)
