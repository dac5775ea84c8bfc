"""Typed errors. Each protocol-facing error carries the reply it maps to, so the reply is
chosen in one place and an exception's own text never reaches a peer (STYLE.md §4)."""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error mss-relay raises on purpose."""


class StoreError(RelayError):
    """The store cannot do what was asked (bad key file, undecryptable blob...)."""


class ProtocolError(RelayError):
    """An error with a reply for the peer.

    `smtp` is a full SMTP reply line (code, enhanced status code RFC 3463, text);
    `imap_code` an RFC 5530 response code. `log_detail` is logged, never sent.
    """

    smtp: str = "451 4.3.0 Local error in processing"
    imap_code: str | None = "SERVERBUG"
    imap_status: str = "NO"

    def __init__(
        self,
        text: str | None = None,
        *,
        smtp: str | None = None,
        log_detail: str | None = None,
    ) -> None:
        super().__init__(text or self.smtp)
        if smtp is not None:
            self.smtp = smtp
        self.text = text or self.smtp
        self.log_detail = log_detail


class PermissionDenied(ProtocolError):
    smtp = "550 5.7.1 Not authorised"
    imap_code = "NOPERM"
    # The box the refused action was on, when the refusal is to be audited (IMAP: any
    # box but the person's own); set by whoever raises, recorded where it is mapped.
    audited_box: str | None = None
    folder: str | None = None


class AuthenticationFailed(ProtocolError):
    smtp = "535 5.7.8 Authentication credentials invalid"
    imap_code = "AUTHENTICATIONFAILED"


class TemporarilyLocked(ProtocolError):
    smtp = "454 4.7.0 Too many authentication failures, try again later"
    imap_code = "UNAVAILABLE"


class MethodNotAllowed(AuthenticationFailed):
    """The person or the box does not accept this login method (`auth.methods`).

    Unlike a bad credential, the text is sent: it names the methods that are allowed,
    so the person knows to use their card or their token instead.
    """


class TokenRejected(AuthenticationFailed):
    """An access token was refused (RFC 7628 §3.2.2). `log_detail` says why (audited);
    `status` is the error code sent in the SASL failure JSON (RFC 6750 §3.1, RFC 9470)."""

    def __init__(self, reason: str, *, status: str = "invalid_token") -> None:
        super().__init__("Authentication failed", log_detail=reason)
        self.status = status


class UnknownSigningKey(TokenRejected):
    """The token names a key id (`kid`) the cached JWKS does not hold: the edge may
    fetch the issuer's keys again (rotation) before refusing."""

    def __init__(self, kid: str | None) -> None:
        super().__init__(f"unknown signing key id {kid!r}")
        self.kid = kid
