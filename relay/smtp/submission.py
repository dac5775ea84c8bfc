"""Submission (ports 587 and 465, RFC 6409 and RFC 8314): authenticated practice
software and mail clients, send-as rights, patient recipients, message completion."""

from __future__ import annotations

import email.message
import email.utils
import secrets
from collections.abc import Awaitable, Callable, Sequence

from aiosmtpd.smtp import AuthResult, Envelope, Session
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.audit.events import AuthFailed, AuthSucceeded, ConversationChanged
from relay.config.model import Mailbox
from relay.delivery.routing import Unroutable
from relay.delivery.worker import resolve_recipient
from relay.errors import AuthenticationFailed, PermissionDenied, TemporarilyLocked, TokenRejected
from relay.identity import sasl_oauth
from relay.identity.auth import Principal
from relay.message.analysis import analyse
from relay.policy import patient
from relay.policy.sending import may_send_as
from relay.policy.xdm import find_xdm_patients
from relay.smtp import replies
from relay.smtp.handler import (
    NULL_REVERSE_PATH,
    BaseHandler,
    declared_size,
    envelope_patients,
    reverse_path,
)
from relay.smtp.headers import HeaderBlock, addr_specs
from relay.smtp.session import RelaySession, RelaySMTP
from relay.store import conversations
from relay.store.store import TxContext


class SubmissionHandler(BaseHandler):
    """Port 587/465: authenticated practice software and mail clients (RFC 6409)."""

    protocol = "smtp-submission"

    async def authenticate_password(
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

    async def authenticate_external(self, server: RelaySMTP, authzid: str | None) -> AuthResult:
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

    async def authenticate_token(
        self, server: RelaySMTP, mechanism: str, message: bytes
    ) -> AuthResult:
        """OAUTHBEARER / XOAUTH2. A refused token: 334 with the RFC 7628 §3.2.2 JSON,
        the client's dummy response, then 535 5.7.8."""
        session = server.session
        assert isinstance(session, RelaySession)
        try:
            bearer = sasl_oauth.PARSERS[mechanism](message)
        except sasl_oauth.MalformedOAuthResponse as exc:
            return AuthResult(
                success=False, handled=False, message=f"501 5.5.2 Malformed {mechanism}: {exc}"
            )
        try:
            principal = await self.runtime.authenticator.token(
                token=bearer.token, authzid=bearer.authzid, peer=session.relay.peer_ip
            )
        except TokenRejected as exc:
            issuer = self.runtime.config.issuer
            if issuer is not None:
                error = sasl_oauth.failure_challenge(
                    mechanism, exc.status, issuer.scope, issuer.discovery_url
                )
                if not isinstance(await server.challenge_auth(error), bytes):
                    # aborted with "*": aiosmtpd has answered 501 already
                    await self._auth_failed(session, mechanism, bearer.authzid, exc)
                    return AuthResult(success=False, handled=True)
            return await self._auth_failed(session, mechanism, bearer.authzid, exc)
        except (AuthenticationFailed, PermissionDenied, TemporarilyLocked) as exc:
            return await self._auth_failed(session, mechanism, bearer.authzid, exc)
        return await self._auth_ok(session, mechanism, principal.person.login, principal)

    async def _auth_ok(
        self, session: RelaySession, mechanism: str, login: str, principal: Principal
    ) -> AuthResult:
        session.relay.principal = principal
        # 235 without waiting for this event's commit (one commit round less per
        # connection); `accept` awaits it before the session's first message, so no
        # message is ever stored without the login before it (Store.record_soon).
        session.relay.login_recorded = self.runtime.store.record_soon(
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
            decision = patient.one_patient(policy, envelope_patients(envelope), ins)
            declared = declared_size(envelope.mail_options)
            if decision.allowed and declared is not None:
                decision = patient.size(policy, declared)
        if not decision.allowed:
            return decision.reply, decision.rule
        if ins is not None:
            envelope_patients(envelope)[ins.matricule] = address
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
        patients = envelope_patients(envelope)
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
            # RFC 8098 §3: a disposition notification (MDN) SHOULD have a null
            # envelope sender. Whether this message is one is known at DATA, where
            # anything else is refused (replies.NULL_SENDER_NOT_MDN); its From: then
            # names the box it comes from.
            session.relay.sender_box = None
            envelope.mail_from = NULL_REVERSE_PATH  # aiosmtpd wants a true value
            envelope.mail_options.extend(mail_options)
            return "250 2.1.0 Null sender ok for a disposition notification"
        verdict = may_send_as(
            self.runtime.config,
            principal.person,
            address,
            self.runtime.today(),
            session_box=principal.as_box,
            method=principal.method,
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
        assert principal is not None
        config = self.runtime.config
        headers = HeaderBlock.parse(envelope.original_content)
        refusal = await self.check_originator_fields(session, envelope, headers)
        if refusal is not None:
            return refusal
        mdn = not reverse_path(envelope)
        if mdn:
            # The box the notification comes from: its (checked) From:.
            state.sender_box = headers.addresses("From")[0]
        assert state.sender_box is not None
        box = config.mailbox(state.sender_box)
        assert box is not None
        if box.owner != principal.person_id:
            # RFC 5322 §3.6.2: the agent who sent the message on behalf of the box.
            headers.replace("Sender", sender_field(config.mailboxes, box, principal))
        if not headers.has("Message-ID"):
            headers.add("Message-ID", f"<{secrets.token_hex(12)}@{config.server.hostname}>")
        if not headers.has("Date"):
            headers.add("Date", email.utils.format_datetime(self.runtime.clock().astimezone()))
        received = envelope.original_content
        envelope.original_content = envelope.content = None
        # The header block rewritten in the received buffer, the body left in place:
        # a copy beside it would double a big message here.
        raw = (
            headers.render_into(received)
            if isinstance(received, bytearray)
            else bytearray(headers.render()) + headers.body
        )
        headers.body = b""  # no view left on the received buffer
        local: list[str] = []
        remote: list[str] = []
        for rcpt in envelope.rcpt_tos:
            kind, _ = self.classify_recipient(rcpt)
            (local if kind == "local" else remote).append(rcpt.lower() if kind == "local" else rcpt)
        protocol_name = "ESMTPSA" if state.tls.version else "ESMTPA"
        extra = None
        if envelope_patients(envelope):
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
            request_note="a disposition notification (RFC 8098)" if mdn else None,
        )

    async def check_originator_fields(
        self, session: RelaySession, envelope: Envelope, headers: HeaderBlock
    ) -> str | None:
        """The refusal (audited) of a message whose originator fields the person may
        not use, or None.

        - From: exactly one field (RFC 5322 §3.6). A message without one is refused,
          not completed: RFC 6409 §8 lists what an MSA may add (Sender, Date,
          Message-ID) and From: is not among them; the author of a health letter is
          not for the relay to guess (which box, for a co-holder of several?), and a
          client that omits it is broken and must be told.
        - From:, and the current (topmost) Resent-From:, name boxes the person may
          send as, like the envelope sender; Sender: and the topmost Resent-Sender:
          name the agent, a box the person may send as in any session.
        - A null envelope sender only for a disposition notification (RFC 8098 §3).
        """
        principal = session.relay.principal
        assert principal is not None
        from_fields = headers.values("From")
        if len(from_fields) != 1 or not headers.addresses("From"):
            reply = replies.NO_FROM if not from_fields else replies.ONE_FROM
            rule = "message.from-missing" if not from_fields else "message.from-count"
            await self.audit_refusal(
                session, stage="data", reason=reply, sender=envelope.mail_from, rule=rule
            )
            return reply
        if not reverse_path(envelope) and not is_disposition_notification(headers):
            await self.audit_refusal(
                session,
                stage="data",
                reason=replies.NULL_SENDER_NOT_MDN,
                sender="",
                rule="send-as.null",
            )
            return replies.NULL_SENDER_NOT_MDN
        checks: list[tuple[str, list[str], str | None]] = [
            ("From", headers.addresses("From"), principal.as_box),
            ("Sender", headers.addresses("Sender"), None),
            ("Resent-From", _topmost(headers, "Resent-From"), principal.as_box),
            ("Resent-Sender", _topmost(headers, "Resent-Sender"), None),
        ]
        for name, addresses, session_box in checks:
            for addr in addresses:
                verdict = may_send_as(
                    self.runtime.config,
                    principal.person,
                    addr,
                    self.runtime.today(),
                    session_box=session_box,
                    method=principal.method,
                )
                if not verdict.allowed:
                    reply = verdict.reply.replace("550 5.7.1 ", f"550 5.7.1 {name}: ", 1)
                    await self.audit_refusal(
                        session,
                        stage="data",
                        reason=reply,
                        sender=envelope.mail_from,
                        rule=verdict.rule,
                    )
                    return reply
        return None


def sender_field(boxes: Sequence[Mailbox], box: Mailbox, principal: Principal) -> str:
    """The Sender: of a message a co-holder sends as `box` (RFC 5322 §3.6.2): the
    person's display name, with their own PER box's address when the box is ours.

    A box hosted at an operator (gateway mode) gets the *box's* address under the
    person's name: the message leaves through the operator's submission with the
    box's login, and an operator checks the originator fields against that login
    (mss-relay as an operator does: `check_originator_fields`; Postfix's
    `reject_sender_login_mismatch` does for the envelope and the usual milters for the
    headers): a Sender: naming an address of ours, which the box's login does not
    own, would be refused or rewritten there. The person's name still reaches the
    recipient, and mss-relay's own trail names the person in full."""
    name = principal.person.display_name.replace('"', "'").replace("\\", "")
    if box.upstream is not None:
        return f'"{name}" <{box.address}>'
    own = [m.address for m in boxes if m.owner == principal.person_id and m.type.value == "PER"]
    return f'"{name}" <{own[0] if own else box.address}>'


def _topmost(headers: HeaderBlock, name: str) -> list[str]:
    """The addresses of the first `name` field: RFC 5322 §3.6.6, each resend adds its
    Resent-* block on top; older blocks are other people's earlier resends."""
    values = headers.values(name)
    if not values:
        return []
    return addr_specs(values[:1])


def is_disposition_notification(headers: HeaderBlock) -> bool:
    """RFC 8098 §3: an MDN is `multipart/report; report-type=disposition-notification`."""
    values = headers.values("Content-Type")
    if len(values) != 1:
        return False
    parsed = email.message.Message()
    parsed["Content-Type"] = values[0]
    return (
        parsed.get_content_type() == "multipart/report"
        and str(parsed.get_param("report-type", "")).lower() == "disposition-notification"
    )
