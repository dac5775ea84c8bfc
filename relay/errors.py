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


class AuthenticationFailed(ProtocolError):
    smtp = "535 5.7.8 Authentication credentials invalid"
    imap_code = "AUTHENTICATIONFAILED"


class TemporarilyLocked(ProtocolError):
    smtp = "454 4.7.0 Too many authentication failures, try again later"
    imap_code = "UNAVAILABLE"
