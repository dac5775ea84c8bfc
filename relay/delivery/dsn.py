"""Delivery status notifications (bounces and delay warnings). Pure: builds bytes.

The message is a ``multipart/report; report-type=delivery-status`` (RFC 6522, which
obsoletes RFC 3462) with three parts:

1. ``text/plain`` UTF-8: a human explanation in French, then English;
2. ``message/delivery-status`` (RFC 3464 §2): per-message fields, then one block per
   recipient;
3. ``text/rfc822-headers`` (RFC 6522 §4): the original message's header section only.
   Never the body: MSSanté bodies carry health data, and RFC 3464 §6.2 lets a DSN
   return headers only (as ``RET=HDRS`` of RFC 3461 §4.3 asks).

Callers must never build a DSN for a message whose reverse-path was null (RFC 5321
§4.5.5, RFC 3464 §2), which is what every DSN itself has: `build_dsn` raises
ValueError for an empty sender, but the caller should check first and simply drop the
notification. The DSN must be sent with a null reverse-path (``MAIL FROM:<>``).
"""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
import quopri
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from email.header import Header
from email.utils import format_datetime
from typing import Literal

__all__ = ["DsnAction", "DsnKind", "FailedRecipient", "build_dsn"]

DsnKind = Literal["failure", "delay"]
DsnAction = Literal["failed", "delayed"]

CRLF = "\r\n"
_MAX_LINE = 998  # RFC 5322 §2.1.1: at most 998 characters per line, excluding CRLF
_FOLD_AT = 78  # RFC 5322 §2.1.1: SHOULD be at most 78
_MAX_FIELD_CHARS = 800  # bound on any one field value taken from outside (remote replies)
_MAX_SUBJECT_CHARS = 120  # of the original subject quoted in ours

# RFC 3463 §2: class.subject.detail, class 2/4/5, subject and detail 1 to 3 digits.
_STATUS_RE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?\Z")
_DIAG_TYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]*\s*;")
_MSG_ID_RE = re.compile(r"<[!-;=?-~]{1,244}@[!-;=?-~]{1,244}>\Z")  # no <, > or spaces
_BLANK_LINE_RE = re.compile(rb"\r\n\r\n|\n\n|\r\r|\n\r\n|\r\n\n")
_LINE_BREAK_RE = re.compile(rb"\r\n|\n|\r")
_PLAIN_LINE_RE = re.compile(rb"[\t\x20-\x7e]*\Z")  # printable ASCII and tab only

# Short explanations (French, English) of common RFC 3463 codes, for the human part.
_STATUS_TEXT: dict[str, tuple[str, str]] = {
    "5.1.1": ("adresse du destinataire inconnue", "unknown recipient address"),
    "5.1.2": ("domaine du destinataire introuvable", "recipient domain not found"),
    "5.1.3": ("adresse du destinataire mal formée", "malformed recipient address"),
    "5.2.1": ("boîte du destinataire désactivée", "recipient mailbox disabled"),
    "5.2.2": ("boîte du destinataire pleine", "recipient mailbox full"),
    "4.2.2": ("boîte du destinataire pleine", "recipient mailbox full"),
    "5.3.4": ("message trop volumineux", "message too large"),
    "5.4.4": ("aucune route vers le destinataire", "no route to the recipient"),
    "4.4.1": ("le serveur distant ne répond pas", "the remote server does not answer"),
    "4.4.2": ("connexion interrompue", "connection dropped"),
    "4.4.7": ("délai de remise dépassé", "delivery time expired"),
    "5.4.7": ("délai de remise dépassé", "delivery time expired"),
    "4.7.5": ("échec de la vérification TLS", "TLS verification failed"),
    "5.7.1": ("remise refusée par le destinataire", "delivery refused by the recipient"),
}


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    """One recipient the DSN reports on (RFC 3464 §2.3 per-recipient fields).

    ``diagnostic_code`` is ``"<type>; <text>"`` such as ``"smtp; 550 5.1.1 unknown"``
    (a bare text gets the ``smtp`` type). ``will_retry_until`` is only reported for
    ``delayed`` (RFC 3464 §2.3.9). ``original_recipient`` is the RFC 3461 ORCPT value,
    ``"<addr-type>;<address>"``, already xtext-decoded.
    """

    recipient: str
    status: str
    action: DsnAction
    diagnostic_code: str | None = None
    remote_mta: str | None = None
    last_attempt: dt.datetime | None = None
    will_retry_until: dt.datetime | None = None
    original_recipient: str | None = None

    def __post_init__(self) -> None:
        _check_address("recipient", self.recipient)
        if not _STATUS_RE.match(self.status):
            raise ValueError(f"status {self.status!r} is not an RFC 3463 code like 5.1.1")
        if self.action not in ("failed", "delayed"):
            raise ValueError(f"action must be 'failed' or 'delayed', not {self.action!r}")
        # RFC 3464 §2.3.3/§2.3.4: "delayed" is a transient (4.x.x) condition; a
        # "failed" recipient may carry 4.x.x (e.g. 4.4.7 expired) or 5.x.x, never 2.x.x.
        if self.action == "delayed" and not self.status.startswith("4."):
            raise ValueError(f"a delayed recipient needs a 4.x.x status, not {self.status}")
        if self.action == "failed" and self.status.startswith("2."):
            raise ValueError(f"a failed recipient cannot have status {self.status}")
        for name in ("last_attempt", "will_retry_until"):
            value = getattr(self, name)
            if value is not None:
                _check_aware(name, value)


def _check_aware(name: str, value: dt.datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")


def _check_address(name: str, address: str) -> None:
    if not address or any(ch < " " or ch == "\x7f" for ch in address) or " " in address:
        raise ValueError(f"{name} {address!r} is not a usable address")


def _check_hostname(name: str, host: str) -> None:
    if len(host) > 253 or not _HOSTNAME_RE.match(host):
        raise ValueError(f"{name} {host!r} is not a host name")


def _one_line(value: str, *, ascii_only: bool, limit: int = _MAX_FIELD_CHARS) -> str:
    """Untrusted text made safe for one header or text line: no controls, bounded."""
    out = []
    for ch in value:
        if ch < " " or ch == "\x7f" or ch in "\u2028\u2029\x85":
            out.append(" ")
        elif ascii_only and not ch.isascii():
            out.append("?")
        else:
            out.append(ch)
    text = " ".join("".join(out).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _fold(name: str, value: str) -> str:
    """``Name: value`` folded at spaces near 78 columns (RFC 5322 §2.2.3), CRLF-joined.

    Values are bounded by `_MAX_FIELD_CHARS`, so a word that cannot be folded still
    keeps the line under the 998-character limit.
    """
    lines: list[str] = []
    current = f"{name}:"
    has_word = False
    for word in value.split(" "):
        if not word:
            continue
        if has_word and len(current) + 1 + len(word) > _FOLD_AT:
            lines.append(current)
            current = f" {word}"
        else:
            current += f" {word}"
        has_word = True
    lines.append(current)
    return CRLF.join(lines)


def _utf8_addr_xtext(address: str) -> str:
    """RFC 6533 §3 utf-8-addr-xtext: non-ASCII (and + = \\) as ``\\x{HEX}``."""
    out = []
    for ch in address:
        if "!" <= ch <= "~" and ch not in "+=\\":
            out.append(ch)
        else:
            out.append(f"\\x{{{ord(ch):X}}}")
    return "".join(out)


def _address_field(address: str) -> str:
    """``rfc822; addr`` (RFC 3464 §2.3.2), or RFC 6533 ``utf-8; xtext`` if non-ASCII."""
    if address.isascii():
        return f"rfc822; {address}"
    return f"utf-8; {_utf8_addr_xtext(address)}"


def _diagnostic(code: str) -> str:
    """RFC 3464 §2.3.6 ``diagnostic-type; text``; a bare text is taken as SMTP's."""
    text = _one_line(code, ascii_only=True)
    return text if _DIAG_TYPE_RE.match(text) else f"smtp; {text}"


def _diagnostic_text(code: str) -> str:
    """The diagnostic without its ``type;`` prefix, for people."""
    if _DIAG_TYPE_RE.match(code.strip()):
        return code.split(";", 1)[1]
    return code


def _date(value: dt.datetime) -> str:
    return format_datetime(value)  # RFC 5322 §3.3 date-time, as RFC 3464 §2.1.1 asks


def _human_date(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %z")


def _original_header_section(original: bytes) -> list[bytes]:
    """The header lines of `original`, cut at the first blank line (never a body)."""
    match = _BLANK_LINE_RE.search(original)
    section = original[: match.start()] if match else original
    lines = _LINE_BREAK_RE.split(section)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _original_fields(lines: list[bytes]) -> tuple[str | None, str | None]:
    """Subject (decoded) and Message-ID of the original, when readable."""
    raw = b"\r\n".join(lines) + b"\r\n\r\n"
    try:
        parsed = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(raw)
        subject = parsed.get("Subject")
        message_id = parsed.get("Message-ID")
        subject_text = None if subject is None else str(subject)
        id_text = None if message_id is None else str(message_id).strip()
    except Exception:  # hostile headers: the DSN must still go out, just less informative
        return None, None
    if id_text is not None and not _MSG_ID_RE.match(id_text):
        id_text = None
    return subject_text, id_text


def _subject_header(kind: DsnKind, original_subject: str | None) -> str:
    prefix = "Non remis / Undelivered" if kind == "failure" else "Retardé / Delayed"
    if original_subject:
        quoted = _one_line(original_subject, ascii_only=False, limit=_MAX_SUBJECT_CHARS)
        subject = f"{prefix}: {quoted}" if quoted else prefix
    else:
        subject = prefix
    if subject.isascii():
        return _fold("Subject", subject)
    # RFC 2047 encoded words, folded by the standard library.
    encoded = Header(subject, charset="utf-8", header_name="Subject").encode(linesep=CRLF)
    return f"Subject: {encoded}"


def _reason(recipient: FailedRecipient) -> tuple[str, str]:
    """(French, English) one-line reason for the human part."""
    known = _STATUS_TEXT.get(recipient.status)
    if known is None:
        known = (
            ("échec temporaire", "temporary failure")
            if recipient.status.startswith("4.")
            else ("échec définitif", "permanent failure")
        )
    return f"{known[0]} ({recipient.status})", f"{known[1]} ({recipient.status})"


def _human_text(*, kind: DsnKind, reporting_mta: str, failed: Sequence[FailedRecipient]) -> str:
    fr: list[str] = [
        f"Ceci est un message automatique du serveur de messagerie {reporting_mta}.",
        "",
    ]
    en: list[str] = [f"This is an automatic message from the mail server {reporting_mta}.", ""]
    if kind == "failure":
        fr.append("Votre message n'a pas pu être remis aux destinataires ci-dessous.")
        fr.append("Il ne sera plus réessayé.")
        en.append("Your message could not be delivered to the recipients below.")
        en.append("No further attempts will be made.")
    else:
        fr.append("La remise de votre message aux destinataires ci-dessous est retardée.")
        fr.append("Le serveur continue d'essayer : vous n'avez rien à faire pour l'instant.")
        fr.append("Vous serez prévenu si le message ne peut finalement pas être remis.")
        en.append("Delivery of your message to the recipients below is delayed.")
        en.append("The server keeps trying: there is nothing to do for now.")
        en.append("You will be told if the message finally cannot be delivered.")
    fr.append("")
    en.append("")
    for rcpt in failed:
        reason_fr, reason_en = _reason(rcpt)
        address = _one_line(rcpt.recipient, ascii_only=False)
        fr.append(f"  Destinataire : {address}")
        fr.append(f"  Motif : {reason_fr}")
        en.append(f"  Recipient: {address}")
        en.append(f"  Reason: {reason_en}")
        if rcpt.diagnostic_code:
            server = _one_line(rcpt.remote_mta, ascii_only=True) if rcpt.remote_mta else None
            reply = _one_line(_diagnostic_text(rcpt.diagnostic_code), ascii_only=False)
            if server:
                fr.append(f"  Réponse du serveur {server} : {reply}")
                en.append(f"  Reply from {server}: {reply}")
            else:
                fr.append(f"  Réponse du serveur : {reply}")
                en.append(f"  Server reply: {reply}")
        if rcpt.action == "delayed" and rcpt.will_retry_until is not None:
            fr.append(f"  Nouvelles tentatives jusqu'au : {_human_date(rcpt.will_retry_until)}")
            en.append(f"  Will retry until: {_human_date(rcpt.will_retry_until)}")
        fr.append("")
        en.append("")
    fr.append(
        "Le contenu de votre message n'est pas joint à cet avis ; seuls ses en-têtes le sont."
    )
    en.append("The content of your message is not attached to this notice; only its headers are.")
    return "\n".join([*fr, "-" * 40, "", *en]) + "\n"


def _quoted_printable(data: bytes) -> str:
    """RFC 2045 §6.7 quoted-printable with CRLF line ends (lines ≤ 76)."""
    encoded = quopri.encodestring(data).decode("ascii")
    return CRLF.join(encoded.split("\n"))


def _delivery_status(
    *,
    reporting_mta: str,
    original_envelope_id: str | None,
    arrival_date: dt.datetime,
    failed: Sequence[FailedRecipient],
) -> str:
    """The ``message/delivery-status`` body (RFC 3464 §2.1), CRLF, 7-bit."""
    per_message = []
    if original_envelope_id:
        # RFC 3464 §2.2.1; RFC 3461 §4.4 ENVID, already xtext-decoded by the caller.
        envid = _one_line(original_envelope_id, ascii_only=True, limit=100)
        per_message.append(_fold("Original-Envelope-Id", envid))
    per_message.append(_fold("Reporting-MTA", f"dns; {reporting_mta}"))  # §2.2.2
    per_message.append(_fold("Arrival-Date", _date(arrival_date)))  # §2.2.5
    blocks = [CRLF.join(per_message)]
    for rcpt in failed:
        fields = []
        if rcpt.original_recipient:  # §2.3.1
            orcpt = _one_line(rcpt.original_recipient, ascii_only=True)
            fields.append(_fold("Original-Recipient", orcpt))
        fields.append(_fold("Final-Recipient", _address_field(rcpt.recipient)))  # §2.3.2
        fields.append(f"Action: {rcpt.action}")  # §2.3.3
        fields.append(f"Status: {rcpt.status}")  # §2.3.4
        if rcpt.remote_mta:  # §2.3.5
            remote = _one_line(rcpt.remote_mta, ascii_only=True, limit=255)
            fields.append(_fold("Remote-MTA", f"dns; {remote}"))
        if rcpt.diagnostic_code:  # §2.3.6
            fields.append(_fold("Diagnostic-Code", _diagnostic(rcpt.diagnostic_code)))
        if rcpt.last_attempt is not None:  # §2.3.7
            fields.append(_fold("Last-Attempt-Date", _date(rcpt.last_attempt)))
        if rcpt.action == "delayed" and rcpt.will_retry_until is not None:  # §2.3.9
            fields.append(_fold("Will-Retry-Until", _date(rcpt.will_retry_until)))
        blocks.append(CRLF.join(fields))
    return (CRLF + CRLF).join(blocks) + CRLF


def _headers_part(lines: list[bytes]) -> tuple[str, str]:
    """(Content-Transfer-Encoding, body) for the ``text/rfc822-headers`` part."""
    clean_7bit = all(len(line) <= _MAX_LINE and _PLAIN_LINE_RE.match(line) for line in lines)
    if clean_7bit:
        return "7bit", CRLF.join(line.decode("ascii") for line in lines) + CRLF
    # 8-bit (RFC 6532), control characters or over-long lines in the original headers:
    # quoted-printable keeps the report 7-bit, printable and every line short.
    return "quoted-printable", _quoted_printable(b"\n".join(lines) + b"\n")


def build_dsn(
    *,
    reporting_mta: str,
    original_envelope_id: str | None,
    original_sender: str,
    arrival_date: dt.datetime,
    failed: Sequence[FailedRecipient],
    original_headers: bytes,
    kind: DsnKind,
    now: dt.datetime,
    message_id_domain: str,
) -> bytes:
    """A complete DSN message (CRLF line ends, 7-bit unless the sender is non-ASCII).

    `kind` ``"failure"`` reports recipients with action ``failed``; ``"delay"`` reports
    ``delayed`` ones (one DSN may list several recipients). `original_headers` may be
    the whole original message: only its header section is kept. Raises ValueError for
    a null `original_sender` (never bounce a bounce), an empty or inconsistent
    `failed`, naive datetimes, or a bad host name.
    """
    if original_sender in ("", "<>"):
        raise ValueError("no DSN for a null reverse-path (RFC 5321 §4.5.5, RFC 3464 §2)")
    _check_address("original_sender", original_sender)
    _check_hostname("reporting_mta", reporting_mta)
    _check_hostname("message_id_domain", message_id_domain)
    _check_aware("arrival_date", arrival_date)
    _check_aware("now", now)
    if kind not in ("failure", "delay"):
        raise ValueError(f"kind must be 'failure' or 'delay', not {kind!r}")
    if not failed:
        raise ValueError("a DSN needs at least one recipient")
    wanted = "failed" if kind == "failure" else "delayed"
    for rcpt in failed:
        if rcpt.action != wanted:
            raise ValueError(
                f"a {kind} DSN lists {wanted} recipients; {rcpt.recipient} is {rcpt.action}"
            )

    header_lines = _original_header_section(original_headers)
    original_subject, original_id = _original_fields(header_lines)
    text = _human_text(kind=kind, reporting_mta=reporting_mta, failed=failed)
    status = _delivery_status(
        reporting_mta=reporting_mta,
        original_envelope_id=original_envelope_id,
        arrival_date=arrival_date,
        failed=failed,
    )
    headers_cte, headers_body = _headers_part(header_lines)
    text_body = _quoted_printable(text.encode("utf-8"))

    parts = [
        CRLF.join(
            [
                'Content-Type: text/plain; charset="utf-8"',
                "Content-Transfer-Encoding: quoted-printable",
                "Content-Language: fr, en",
                "Content-Description: Notification",
                "",
                text_body,
            ]
        ),
        CRLF.join(
            [
                "Content-Type: message/delivery-status",
                "Content-Description: Delivery report",
                "",
                status,
            ]
        ),
        CRLF.join(
            [
                "Content-Type: text/rfc822-headers",
                f"Content-Transfer-Encoding: {headers_cte}",
                "Content-Description: Headers of the original message (body not included)",
                "",
                headers_body,
            ]
        ),
    ]
    # "=_" cannot occur in quoted-printable text; the other parts are checked.
    for _ in range(8):
        boundary = f"=_mss-relay-dsn-{uuid.uuid4().hex}"
        if not any(f"--{boundary}" in part for part in parts):
            break
    else:  # pragma: no cover - a uuid4 collision eight times in a row
        raise RuntimeError("could not choose a MIME boundary")

    top = [
        _fold("Date", _date(now)),
        f'From: "Mail Delivery System" <MAILER-DAEMON@{reporting_mta}>',
        _fold("To", f"<{original_sender}>"),
        _subject_header(kind, original_subject),
        f"Message-ID: <{uuid.uuid4().hex}@{message_id_domain}>",
    ]
    if original_id is not None:
        top.append(_fold("In-Reply-To", original_id))
        top.append(_fold("References", original_id))
    top += [
        "Auto-Submitted: auto-replied",  # RFC 3834 §5
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",  # RFC 6522 §3
        f' boundary="{boundary}"',
    ]
    body = [
        "This is a MIME-formatted delivery status notification (RFC 3464).",
        "",
    ]
    for part in parts:
        # Each part keeps its final CRLF; the CRLF before the next delimiter belongs
        # to the delimiter (RFC 2046 §5.1.1).
        body.append(f"--{boundary}")
        body.append(part)
    body.append(f"--{boundary}--")
    message = CRLF.join(top) + CRLF + CRLF + CRLF.join(body) + CRLF
    return message.encode("utf-8")
