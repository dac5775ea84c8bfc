"""Outbound SMTP to another MSSanté operator: mutual TLS, verified peer, never plain text.

aiosmtplib ≥ 5.1.2 with ``start_tls=True`` on every connection: its default
(``start_tls=None``) upgrades only *if* the server offers STARTTLS and otherwise sends
in plain text without a word (DESIGN.md). We go one step further and check the
offer ourselves before aiosmtplib does, so a peer without STARTTLS is a typed
`DeliveryFailure` ("no STARTTLS: refusing to send in plain text"), never a send.

Verification, in order:
1. the handshake (OpenSSL, `relay.tls.context.client_context`): the peer's chain
   leads to our trust anchors, every certificate is within its validity, none is
   revoked (CRLs of the whole chain), and, when no DN is expected, the certificate
   matches the host name (RFC 6125);
2. after the handshake, when the route or the trust space names a DN: the peer's
   subject must equal it (`relay.tls.peer.dn_equal`).
Our own certificate is presented (the client context loads it): peers require it.

To an operator's submission service (gateway mode, `relay.delivery.routing.
OperatorSubmission`) the same function opens the connection with implicit TLS (RFC
8314) or STARTTLS, verifies the operator's certificate against the box's trust
anchors and its host name, then authenticates with the box's credential
(`SubmissionAuth`: AUTH over TLS only, RFC 4954 §4; EXTERNAL for a client
certificate, RFC 4422 appendix A) before any MAIL FROM.

Each failure carries an RFC 3463 status: connection problems are X.4.x, TLS and
identity problems X.7.x; all of them are transient (the recipient is retried) except
where DNS says the domain cannot receive mail at all.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from relay.tls.peer import PeerCertificate, dn_equal, peer_from_ssl_object

__all__ = [
    "DeliveryFailure",
    "PeerConnection",
    "Reply",
    "SubmissionAuth",
    "mx_hosts",
    "session_refused_status",
]

_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True, slots=True)
class Reply:
    """A peer's reply to one recipient: code and text (RFC 5321 §4.2)."""

    code: int
    text: str

    @property
    def status(self) -> str:
        """The RFC 3463 enhanced status: from the text, else from the code's class."""
        m = _ENHANCED.match(self.text)
        if m and m.group(1) == str(self.code)[0]:
            return m.group(0)
        return f"{str(self.code)[0]}.0.0"

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    @property
    def success(self) -> bool:
        return 200 <= self.code < 300

    def __str__(self) -> str:
        text = " ".join(self.text.split())
        return f"{self.code} {text}"[:500]


class DeliveryFailure(Exception):
    """The connection could not be made, verified or kept; applies to every recipient
    in flight on it. `reason` is for the queue row, the audit trail and the logs
    (never for a peer); `status` an RFC 3463 code."""

    def __init__(self, reason: str, *, status: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class SubmissionAuth:
    """The box's credential at its operator. `password` None: the box's client
    certificate (in the TLS context) is the credential, AUTH EXTERNAL when offered."""

    login: str
    password: str | None

    def __repr__(self) -> str:  # never the password in a log line or a traceback
        return f"SubmissionAuth(login={self.login!r}, password={'***' if self.password else None})"


class _NoStartTls(aiosmtplib.SMTPException):
    pass


class _StrictSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client, refusing typed when the server does not offer STARTTLS."""

    async def starttls(self, *args: Any, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        if self.last_ehlo_response is None:
            await self.ehlo()
        if not self.supports_extension("starttls"):
            # Nothing to send in clear; still end the session properly (RFC 5321
            # §4.1.1.10) rather than drop it.
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await self.quit(timeout=5)
            raise _NoStartTls("the server does not offer STARTTLS")
        return await super().starttls(*args, **kwargs)


def session_refused_status(reply: Reply, *, tls_up: bool) -> str:
    """The RFC 3463 status of a deferral when the peer refuses the session itself
    (greeting, STARTTLS or EHLO answered 4xx/5xx): its own X.7.Y when it gives one (a
    security or policy refusal, such as our certificate not trusted: Postfix answers
    "421 4.7.1" after the handshake), X.7.5 when a refusal right after the handshake
    names a certificate without a code, else 4.4.2 (connection dropped). Always
    transient: the recipient is retried, the operator may fix the trust."""
    m = _ENHANCED.match(reply.text)
    if m is not None and m.group(2) == "7":
        return f"4.7.{m.group(3)}"
    if tls_up and "certificat" in reply.text.lower():  # "certificate", "certificat"
        return "4.7.5"
    return "4.4.2"


async def _quit_and_close(smtp: aiosmtplib.SMTP) -> None:
    """QUIT (RFC 5321 §4.1.1.10), then close whatever the peer answers or does."""
    try:
        if smtp.is_connected:
            await smtp.quit(timeout=5)
    except (aiosmtplib.SMTPException, OSError):
        pass
    finally:
        smtp.close()


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"peer certificate refused: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    return str(exc)


class PeerConnection:
    """One SMTP connection to a peer MTA, TLS up and the peer verified."""

    def __init__(
        self, smtp: aiosmtplib.SMTP, host: str, port: int, peer: PeerCertificate | None
    ) -> None:
        self._smtp = smtp
        self.host = host
        self.port = port
        self.peer = peer
        self.messages_sent = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    async def open(
        cls,
        *,
        host: str,
        port: int,
        context: ssl.SSLContext,
        expected_dn: str | None,
        local_hostname: str,
        connect_timeout: float,
        command_timeout: float,
        implicit_tls: bool = False,
        auth: SubmissionAuth | None = None,
    ) -> PeerConnection:
        """Connect, STARTTLS (required) or implicit TLS, EHLO again, check the peer's
        identity, authenticate when `auth` is given.

        Raises `DeliveryFailure` for every way this can fail; nothing is sent then.
        """
        where = f"{host}:{port}"
        smtp = _StrictSMTP(
            hostname=host,
            port=port,
            local_hostname=local_hostname,
            use_tls=implicit_tls,
            # never plain text (see the module docstring)
            start_tls=not implicit_tls,
            tls_context=context,
            timeout=command_timeout,
        )
        tls_up = False
        try:
            await smtp.connect(timeout=connect_timeout)
            tls_up = True
            # The first command after the handshake: a peer refusing our certificate
            # (TLS 1.3 reports it after the client's side of the handshake) shows here.
            await smtp.ehlo()
        except _NoStartTls:
            raise DeliveryFailure(
                f"{where} does not offer STARTTLS: refusing to send in plain text",
                status="4.7.10",  # RFC 5248 registry: X.7.10 encryption needed
            ) from None
        except ssl.SSLError as exc:
            raise DeliveryFailure(f"{where}: {_tls_reason(exc)}", status="4.7.5") from None
        except aiosmtplib.SMTPConnectTimeoutError:
            raise DeliveryFailure(f"{where}: connection timed out", status="4.4.1") from None
        except aiosmtplib.SMTPConnectResponseError as exc:
            # A greeting other than 220 (RFC 5321 §3.1): try again later.
            reply = Reply(exc.code, exc.message)
            raise DeliveryFailure(
                f"{where} refused the session: {reply}",
                status=session_refused_status(reply, tls_up=False),
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            reply = Reply(exc.code, exc.message)
            raise DeliveryFailure(
                f"{where}: {reply}", status=session_refused_status(reply, tls_up=tls_up)
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ssl.SSLError):
                raise DeliveryFailure(f"{where}: {_tls_reason(cause)}", status="4.7.5") from None
            if tls_up:
                raise DeliveryFailure(
                    f"{where} ended the session right after the TLS handshake ({exc}): "
                    "it may not accept our certificate",
                    status="4.7.5",
                ) from None
            raise DeliveryFailure(f"{where}: connection failed: {exc}", status="4.4.1") from None
        ssl_obj = smtp.get_transport_info("ssl_object")
        peer = peer_from_ssl_object(ssl_obj if isinstance(ssl_obj, ssl.SSLObject) else None)
        if peer is None:  # cannot happen with CERT_REQUIRED; fail closed anyway
            await _quit_and_close(smtp)
            raise DeliveryFailure(f"{where}: no verified peer certificate", status="4.7.5")
        if expected_dn is not None and not dn_equal(expected_dn, peer.subject):
            # Nothing is sent to a peer that is not the one expected; the session is
            # still ended with QUIT, not dropped.
            await _quit_and_close(smtp)
            raise DeliveryFailure(
                f"{where}: peer certificate subject {peer.subject!r} is not the "
                f"expected {expected_dn!r}",
                status="4.7.5",
            )
        if auth is not None:
            try:
                await _authenticate(smtp, auth, where)
            except DeliveryFailure:
                await _quit_and_close(smtp)
                raise
        return cls(smtp, host, port, peer)

    async def send(self, sender: str, recipients: Sequence[str], data: bytes) -> dict[str, Reply]:
        """One mail transaction (RFC 5321 §3.3); the reply that decides each recipient.

        Raises `DeliveryFailure` when the connection breaks: then no recipient of this
        transaction may be considered delivered.
        """
        smtp = self._smtp
        results: dict[str, Reply] = {}
        options: list[str] = []
        encoding = "ascii"
        if smtp.supports_extension("size"):
            limit = smtp.esmtp_extensions.get("size", "")
            if limit.isdigit() and int(limit) and len(data) > int(limit):
                reply = Reply(
                    552,
                    f"5.3.4 message is {len(data)} octets, {self.address} "
                    f"accepts at most {limit} (RFC 1870)",
                )
                return dict.fromkeys(recipients, reply)
            options.append(f"SIZE={len(data)}")
        if not data.isascii():
            if not smtp.supports_extension("8bitmime"):
                reply = Reply(554, f"5.6.3 {self.address} does not accept 8-bit data (RFC 6152)")
                return dict.fromkeys(recipients, reply)
            options.append("BODY=8BITMIME")
        if not (sender.isascii() and all(r.isascii() for r in recipients)):
            if not smtp.supports_extension("smtputf8"):
                reply = Reply(
                    553, f"5.6.7 {self.address} does not accept UTF-8 addresses (RFC 6531 §3.2)"
                )
                return dict.fromkeys(recipients, reply)
            options.append("SMTPUTF8")
            encoding = "utf-8"
        try:
            try:
                await smtp.mail(sender, options=options, encoding=encoding)
            except aiosmtplib.SMTPSenderRefused as exc:
                await smtp.rset()
                return dict.fromkeys(recipients, Reply(exc.code, exc.message))
            accepted: list[str] = []
            for rcpt in recipients:
                try:
                    await smtp.rcpt(rcpt, encoding=encoding)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    results[rcpt] = Reply(exc.code, exc.message)
                else:
                    accepted.append(rcpt)
            if not accepted:
                await smtp.rset()
                return results
            try:
                # RFC 5321 §4.5.3.2.6: 10 minutes for the reply to the final dot.
                response = await smtp.data(data, timeout=2 * (smtp.timeout or 300))
                reply = Reply(response.code, response.message)
            except aiosmtplib.SMTPDataError as exc:
                reply = Reply(exc.code, exc.message)
            for rcpt in accepted:
                results[rcpt] = reply
            self.messages_sent += 1
            return results
        except aiosmtplib.SMTPResponseException as exc:
            # e.g. 421 on RSET: the session is over
            raise DeliveryFailure(
                f"{self.address}: {Reply(exc.code, exc.message)}", status="4.4.2"
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryFailure(
                f"{self.address}: connection lost: {exc}", status="4.4.2"
            ) from None

    async def close(self) -> None:
        """QUIT politely (RFC 5321 §4.1.1.10), or just drop the connection."""
        await _quit_and_close(self._smtp)


async def _authenticate(smtp: aiosmtplib.SMTP, auth: SubmissionAuth, where: str) -> None:
    """AUTH with the box's credential (RFC 4954), on the TLS session only. Every
    refusal is a transient `DeliveryFailure` (the queue retries on its schedule, the
    admin can fix the credential): 5.7.8 credentials refused becomes 4.7.8."""
    try:
        if auth.password is not None:
            if not smtp.supports_extension("auth"):
                raise DeliveryFailure(
                    f"{where} does not offer AUTH: cannot authenticate as {auth.login}",
                    status="4.7.0",
                )
            await smtp.login(auth.login, auth.password)
            return
        if "external" in smtp.server_auth_methods:
            # RFC 4422 appendix A: "=" is an empty authzid, the certificate's identity.
            response = await smtp.execute_command(b"AUTH", b"EXTERNAL", b"=")
            if response.code != 235:
                raise aiosmtplib.SMTPAuthenticationError(response.code, response.message)
        # No EXTERNAL offered: the client certificate of the TLS handshake is the
        # credential (operators that map certificates to boxes without SASL).
    except aiosmtplib.SMTPAuthenticationError as exc:
        reply = Reply(exc.code, exc.message)
        status = "4.7.8" if reply.permanent or reply.status.endswith(".7.8") else "4.7.0"
        raise DeliveryFailure(
            f"{where} refused the box's credential (login {auth.login}): {reply}",
            status=status,
        ) from None
    except aiosmtplib.SMTPResponseException as exc:
        reply = Reply(exc.code, exc.message)
        raise DeliveryFailure(f"{where}: AUTH failed: {reply}", status="4.7.0") from None
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
        raise DeliveryFailure(
            f"{where}: connection lost during AUTH: {exc}", status="4.4.2"
        ) from None
    except aiosmtplib.SMTPException as exc:  # e.g. no mechanism aiosmtplib speaks
        raise DeliveryFailure(f"{where}: AUTH failed: {exc}", status="4.7.0") from None


async def mx_hosts(domain: str, *, lifetime_seconds: float) -> list[str]:
    """The hosts to try for `domain`, best MX preference first (RFC 5321 §5.1).

    No MX record: the domain itself (implicit MX). A "null MX" (RFC 7505) or a domain
    that does not exist: a permanent `DeliveryFailure`. DNS trouble: a transient one.
    """
    resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = lifetime_seconds
    try:
        answer = await resolver.resolve(domain, dns.rdatatype.MX)
    except dns.resolver.NXDOMAIN:
        raise DeliveryFailure(
            f"domain {domain} does not exist", status="5.1.2", permanent=True
        ) from None
    except dns.resolver.NoAnswer:
        return [domain]
    except dns.exception.DNSException as exc:
        raise DeliveryFailure(
            f"MX lookup for {domain} failed: {type(exc).__name__}", status="4.4.3"
        ) from None
    records = sorted(
        ((int(r.preference), str(r.exchange).rstrip(".").lower()) for r in answer),
        key=lambda pair: pair[0],
    )
    if len(records) == 1 and records[0][1] == "":
        raise DeliveryFailure(
            f"{domain} accepts no mail (null MX, RFC 7505)", status="5.1.10", permanent=True
        )
    return [host for _, host in records if host]
