"""The Received: trace header (RFC 5321 §4.4, RFC 3848)."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from typing import Any

import pytest

from relay.message.received import ReceivedHeaderError, received_header

NOW = dt.datetime(2026, 11, 22, 5, 31, 6, tzinfo=dt.UTC)


def make(**overrides: Any) -> bytes:
    args: dict[str, Any] = {
        "from_helo": "ehlo-name",
        "from_ip": "127.0.0.1",
        "by_host": "mx.cpts.mssante.fr",
        "protocol": "ESMTPSA",
        "tls_version": "TLSv1.3",
        "cipher": "TLS_AES_256_GCM_SHA384",
        "recipient": "secretariat@cpts.mssante.fr",
        "queue_id": "QID42",
        "authenticated_as": None,
        "now": NOW,
    }
    args.update(overrides)
    return received_header(**args)


def unfold(header: bytes) -> str:
    return header.decode("ascii").replace("\r\n\t", " ").removesuffix("\r\n")


def test_example() -> None:
    got = make()
    assert unfold(got) == (
        "Received: from ehlo-name ([127.0.0.1]) (using TLSv1.3 with cipher"
        " TLS_AES_256_GCM_SHA384) by mx.cpts.mssante.fr with ESMTPSA id QID42"
        " for <secretariat@cpts.mssante.fr>; Sun, 22 Nov 2026 05:31:06 +0000"
    )
    assert got.endswith(b"\r\n")
    assert all(len(line) < 78 for line in got.split(b"\r\n"))
    assert got.count(b"\r\n") >= 2  # it had to fold


def test_plain_esmtp_without_tls_or_recipient() -> None:
    got = unfold(make(protocol="ESMTP", tls_version=None, cipher=None, recipient=None))
    assert got == (
        "Received: from ehlo-name ([127.0.0.1]) by mx.cpts.mssante.fr with ESMTP id QID42;"
        " Sun, 22 Nov 2026 05:31:06 +0000"
    )


def test_ipv6_literal_and_offset_zone() -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    got = unfold(make(from_ip="::1", now=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=paris)))
    assert "([IPv6:::1])" in got
    assert got.endswith("; Fri, 02 Jan 2026 03:04:05 +0100")


def test_authenticated_as_is_a_comment() -> None:
    got = unfold(make(authenticated_as="alice (admin)"))
    assert "(authenticated as alice__admin_)" in got


@pytest.mark.parametrize(
    "field",
    ["from_helo", "by_host", "queue_id", "recipient", "cipher", "tls_version", "authenticated_as"],
)
def test_injection_is_neutralised(field: str) -> None:
    evil = "x\r\nBcc: victim@example.org\r\n\r\n(injected) <a>"
    got = make(**{field: evil})
    lines = got.split(b"\r\n")
    assert lines[-1] == b""
    assert all(line.startswith((b"Received:", b"\t")) for line in lines[:-1])
    assert b"\n" not in got.replace(b"\r\n", b"")
    assert b"\r" not in got.replace(b"\r\n", b"")
    # The header still parses as one field with balanced comments.
    msg = email.message_from_bytes(got + b"\r\n", policy=email.policy.compat32)
    assert list(msg.keys()) == ["Received"]
    value = unfold(got)
    assert value.count("(") == value.count(")")


def test_long_words_stay_whole() -> None:
    got = make(recipient="a" * 100 + "@example.org")
    assert b"<" + b"a" * 100 + b"@example.org>;" in got
    long_lines = [line for line in got.split(b"\r\n") if len(line) >= 78]
    assert long_lines == [b"\t<" + b"a" * 100 + b"@example.org>;"]


def test_rejects_unknown_protocol() -> None:
    with pytest.raises(ReceivedHeaderError):
        make(protocol="HTTP")


def test_rejects_naive_time() -> None:
    with pytest.raises(ReceivedHeaderError):
        make(now=dt.datetime(2026, 1, 1))


def test_the_same_instant_in_two_zones_gives_each_its_own_offset() -> None:
    """The date text is kept for the second it names: 12:00 UTC and 13:00 in Paris are
    equal datetimes, and each trace still shows its own zone."""
    utc = dt.datetime(2026, 12, 3, 12, 0, 0, 250_000, tzinfo=dt.UTC)
    paris = utc.astimezone(dt.timezone(dt.timedelta(hours=1)))
    assert unfold(make(now=utc)).endswith("Thu, 03 Dec 2026 12:00:00 +0000")
    assert unfold(make(now=paris)).endswith("Thu, 03 Dec 2026 13:00:00 +0100")
    assert unfold(make(now=utc + dt.timedelta(seconds=1))).endswith("12:00:01 +0000")
