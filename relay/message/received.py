"""The `Received:` trace header a server prepends when it accepts a message.

RFC 5321 §4.4 (time-stamp-line), with the `with` protocol keywords of RFC 3848 and
the TLS details as a comment, the way Postfix writes them:

    Received: from ehlo-name ([127.0.0.1])
        (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384) by mx.example with ESMTPSA
        id QID for <rcpt@example>; Sun, 22 Nov 2026 05:31:06 +0000

Every value comes from the peer or the session and is sanitised so it cannot break the
header (no CR, LF, parenthesis or bracket injection). Never pass a password or an
authorisation identity: only what the caller wants recipients to see goes in.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import re
from email.utils import format_datetime

# RFC 3848 §2 (and RFC 6531 §3.7.3 for the UTF8 variants); ESMTP/SMTP from RFC 5321.
PROTOCOLS = frozenset(
    {
        "SMTP",
        "ESMTP",
        "ESMTPA",
        "ESMTPS",
        "ESMTPSA",
        "UTF8SMTP",
        "UTF8SMTPA",
        "UTF8SMTPS",
        "UTF8SMTPSA",
    }
)

# RFC 5322 §2.1.1: lines SHOULD be at most 78 characters; we stay below that.
MAX_LINE_CHARS = 77

_HELO_UNSAFE = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")
_WORD_UNSAFE = re.compile(r"[^!-~]")
_COMMENT_UNSAFE = re.compile(r"[^!-~]|[()\\]")


class ReceivedHeaderError(ValueError):
    """The caller passed a value the trace header cannot carry (a programming error)."""


def received_header(
    *,
    from_helo: str,
    from_ip: str,
    by_host: str,
    protocol: str,
    tls_version: str | None,
    cipher: str | None,
    recipient: str | None,
    queue_id: str,
    authenticated_as: str | None,
    now: dt.datetime,
) -> bytes:
    """A folded, CRLF-terminated `Received:` header line (RFC 5321 §4.4).

    `recipient` is given only for a single-recipient transaction (the `for` clause
    would otherwise disclose Bcc recipients). `authenticated_as`, when given, is shown
    as a comment; callers that must not disclose who submitted pass None.
    """
    if protocol not in PROTOCOLS:
        raise ReceivedHeaderError(f"unknown protocol keyword {protocol!r}")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ReceivedHeaderError("the time stamp needs a time zone")

    helo = _HELO_UNSAFE.sub("_", from_helo)[:255] or "unknown"
    words = ["Received:", "from", helo, f"({_address_literal(from_ip)})"]
    if tls_version or cipher:
        tls = ["(using", _WORD_UNSAFE.sub("_", tls_version or "TLS")]
        if cipher:
            tls += ["with", "cipher", _COMMENT_UNSAFE.sub("_", cipher)]
        tls[-1] += ")"
        words += tls
    if authenticated_as:
        words += ["(authenticated", "as", _COMMENT_UNSAFE.sub("_", authenticated_as) + ")"]
    words += ["by", _HELO_UNSAFE.sub("_", by_host) or "localhost", "with", protocol]
    words += ["id", _WORD_UNSAFE.sub("_", queue_id) or "unknown"]
    if recipient:
        words += ["for", "<" + _WORD_UNSAFE.sub("_", recipient).replace(">", "_") + ">"]
    words[-1] += ";"
    # RFC 5322 §3.3 date-time, e.g. "Sun, 22 Nov 2026 05:31:06 +0000".
    words += _date_time(now.replace(microsecond=0), now.utcoffset()).split(" ")
    return _fold(words).encode("ascii") + b"\r\n"


@functools.lru_cache(maxsize=4)
def _date_time(second: dt.datetime, offset: dt.timedelta | None) -> str:
    # The same text for every message of a second (format_datetime has no finer unit):
    # made once, not once a message (~8 us each). The offset is in the key because
    # datetimes of one instant in two zones are equal, and the text shows the zone.
    return format_datetime(second)


@functools.lru_cache(maxsize=1024)
def _address_literal(ip: str) -> str:
    """RFC 5321 §4.1.3 address literal: [192.0.2.1] or [IPv6:2001:db8::1]. Kept for
    the peers seen last (practice software sends from a few addresses; `ip_address`
    is about 4 us a message)."""
    try:
        addr = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        return "[" + _HELO_UNSAFE.sub("_", ip) + "]"
    if addr.version == 6:
        return f"[IPv6:{addr.compressed}]"
    return f"[{addr}]"


def _fold(words: list[str]) -> str:
    """Join words with spaces, folding (CRLF TAB, RFC 5322 §2.2.3) before a line
    would pass MAX_LINE_CHARS. A word longer than a line stays whole on its own line."""
    lines: list[str] = []
    line = ""
    for word in words:
        if not line:
            line = word
        elif len(line) + 1 + len(word) <= MAX_LINE_CHARS:
            line += " " + word
        else:
            lines.append(line)
            line = "\t" + word
    lines.append(line)
    return "\r\n".join(lines)
