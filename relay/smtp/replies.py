"""SMTP replies: the one place where reply codes are chosen.

aiosmtpd's built-in replies lack RFC 3463 enhanced status codes, which we advertise
(ENHANCEDSTATUSCODES, RFC 2034: every reply but the greeting and EHLO/HELO). `enhance`
adds them to any 4xx/5xx reply that has none, from the table below.

Reply text is ASCII (RFC 5321 §4.2: "text" is printable US-ASCII); the templates are
written so, and `ascii_reply` is the net for what a reply echoes (an address under
SMTPUTF8, a certificate subject): accents dropped, anything else a "?".
"""

from __future__ import annotations

import re
import unicodedata

_ENHANCED = re.compile(r"^\d{3}[ -]\d\.\d{1,3}\.\d{1,3}(?: |$)")

# Default enhanced code per basic code (RFC 3463 §3, RFC 5321 §4.2.3).
DEFAULT_ENHANCED: dict[str, str] = {
    "221": "2.0.0",
    "421": "4.4.2",
    "450": "4.2.0",
    "451": "4.3.0",
    "452": "4.5.3",
    "454": "4.7.0",
    "455": "4.5.4",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "534": "5.7.9",
    "535": "5.7.8",
    "538": "5.7.11",
    "550": "5.7.1",
    "551": "5.1.6",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}

# aiosmtpd texts rewritten to say what is wrong in our words.
REWORDED: dict[str, str] = {
    "552 Error: message size exceeds fixed maximum message size": (
        "552 5.3.4 Message size exceeds the fixed maximum message size"
    ),
    "552 Error: Too much mail data": "552 5.3.4 Message size exceeds the fixed maximum",
    "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
    "500 Command line too long": "500 5.5.2 Line too long (RFC 5321 section 4.5.3.1.4)",
    "554 Command refused due to lack of security": "554 5.7.0 TLS handshake not accepted",
}

OK_QUEUED = "250 2.0.0 Ok: queued as {queue_id}"
NEED_AUTH = "530 5.7.0 Authentication required"
LOCAL_ERROR = "451 4.3.0 Local error in processing (reference {ref})"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients (at most {limit} per message)"
BARE_LINE_ENDING = (
    "550 5.6.0 Message refused: bare LF or CR in the data (RFC 5321 section 2.3.8); nothing stored"
)
LINE_TOO_LONG = (
    "500 5.5.2 Line too long: at most {limit} octets with CRLF (RFC 5321 section 4.5.3.1.6)"
)
TOO_BIG = "552 5.3.4 Message too big: at most {limit} octets"
RELAY_DENIED = "550 5.7.1 Relaying denied: {address} is not a mailbox of this server"
UNKNOWN_BOX = "550 5.1.1 {address}: no such mailbox here"
LISTENER_FULL = "421 4.7.0 Too many connections to this service ({limit} at most): try again later"
TOO_MANY_FROM_IP = "421 4.7.0 Too many connections from {ip} ({limit} at most): try again later"
KICKED = "421 4.7.0 Connection closed by the administrator"  # `mss-relay kick`
LOGIN_TIMEOUT = "421 4.7.0 No authentication within {seconds} s of connecting: closing"
NO_FROM = (
    "550 5.6.0 The message has no From: header field (RFC 5322 section 3.6 requires"
    " one); nothing stored"
)
ONE_FROM = (
    "550 5.6.0 The message must have exactly one From: field naming its author"
    " (RFC 5322 section 3.6); nothing stored"
)
NULL_SENDER_NOT_MDN = (
    "550 5.7.1 A null sender (MAIL FROM:<>) is for disposition notifications only"
    " (multipart/report; report-type=disposition-notification, RFC 8098 section 3)"
)
TLS_ALREADY_ACTIVE = "503 5.5.1 TLS is already active (RFC 3207 section 4.2)"
PIPELINED_AFTER_STARTTLS = (
    "554 5.5.1 Commands sent after STARTTLS before the TLS handshake are refused"
    " (RFC 3207 section 4.2): closing"
)
NO_CERTIFICATE = "530 5.7.0 A client certificate is required on this port"
TRUST_NOT_LISTED = "550 5.7.1 Sender domain {domain} is not in the MSSante trust space"
TRUST_NO_DN = (
    "550 5.7.1 The MSSante trust space lists no certificate DN for {domain}:"
    " its mail is refused until the list names one"
)
TRUST_DN_MISMATCH = (
    "550 5.7.1 Certificate subject does not match the trust space entry for {domain}"
)
TRUST_UNKNOWN_CERTIFICATE = (
    "550 5.7.1 Certificate {subject} is not listed in the MSSante trust space"
)


def enhance(reply: str) -> str:
    """Give a 4xx/5xx reply an enhanced status code if it has none."""
    reply = REWORDED.get(reply, reply)
    code = reply[:3]
    if code[:1] not in {"4", "5"} and code != "221":
        return reply
    if _ENHANCED.match(reply):
        return reply
    enhanced = DEFAULT_ENHANCED.get(code)
    if enhanced is None or len(reply) < 3:
        return reply
    sep = reply[3:4] or " "
    rest = reply[4:]
    if rest.startswith("Error: "):
        rest = rest[len("Error: ") :]
    return f"{code}{sep}{enhanced} {rest}".rstrip()


def ascii_reply(reply: str) -> str:
    """`reply` in printable ASCII: "é" becomes "e", any other character (controls
    included, so no echoed CR or LF can start a second reply) becomes "?"."""
    if reply.isascii() and reply.isprintable():
        return reply
    stripped = "".join(
        ch for ch in unicodedata.normalize("NFKD", reply) if not unicodedata.combining(ch)
    )
    return "".join(ch if " " <= ch <= "~" else "?" for ch in stripped)
