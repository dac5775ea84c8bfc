"""Inbound relay (port 25): other MSSanté operators over mutual TLS, checked against the
trust space; patient senders only inside a conversation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiosmtpd.smtp import Envelope, Session
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.audit.events import ConversationChanged
from relay.ins import InsError, parse_patient_address
from relay.policy import patient
from relay.smtp import replies
from relay.smtp.handler import BaseHandler, domain_of
from relay.smtp.headers import HeaderBlock
from relay.smtp.session import RelaySession, RelaySMTP
from relay.store import conversations
from relay.store.store import TxContext
from relay.tls.peer import PeerCertificate
from relay.tls.trust_space import has_listed_dn, listed_dn_matches


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
            if any(listed_dn_matches(dn, cert.subject) for dn in dns):
                return None, None
            return (
                replies.TRUST_UNKNOWN_CERTIFICATE.format(subject=cert.subject),
                "trust.null-sender-unknown-certificate",
            )
        domain = domain_of(sender)
        entry = await store.trust_space_lookup(domain)
        rules = self.runtime.policies.mssante
        if entry is None and not rules.inbound_requires_listed_domain:
            return None, None
        if entry is None:
            return replies.TRUST_NOT_LISTED.format(domain=domain), "trust.domain-not-listed"
        if not rules.inbound_requires_matching_dn:
            return None, None
        # A domain listed without DNCertificatOperateur matches no certificate until the
        # ANS (or the admin's import) gives it one: otherwise any IGC-Sante certificate,
        # whichever operator holds it, could send as that domain.
        if not has_listed_dn(entry.certificate_dn):
            return replies.TRUST_NO_DN.format(domain=domain), "trust.domain-without-dn"
        if not listed_dn_matches(entry.certificate_dn, cert.subject):
            return replies.TRUST_DN_MISMATCH.format(domain=domain), "trust.dn-mismatch"
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
