"""OAUTHBEARER (RFC 7628 §3.1) and XOAUTH2 client messages: parsed or refused."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.identity import sasl_oauth as so


@pytest.mark.parametrize(
    ("message", "token", "authzid"),
    [
        (b"n,,\x01auth=Bearer abc.def-ghi\x01\x01", "abc.def-ghi", None),
        (b"n,a=,\x01host=localhost\x01port=993\x01auth=Bearer t0k\x01\x01", "t0k", None),
        (b"y,a=box@x.fr,\x01auth=bearer tok==\x01\x01", "tok==", "box@x.fr"),
        (b"n,a=a=2Cb=3Dc,\x01auth=Bearer t\x01\x01", "t", "a,b=c"),
    ],
)
def test_oauthbearer(message: bytes, token: str, authzid: str | None) -> None:
    assert so.parse_oauthbearer(message) == so.BearerResponse(token, authzid)


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\x01",
        b"p=tls-unique,,\x01auth=Bearer t\x01\x01",  # channel binding
        b"n,,auth=Bearer t\x01\x01",  # no kvsep after the GS2 header
        b"n,,\x01auth=Bearer t\x01",  # one final %x01
        b"n,,\x01auth=Basic dXNlcg==\x01\x01",
        b"n,,\x01auth=Bearer \x01\x01",
        b"n,,\x01host=x\x01\x01",  # no auth
        b"n,,\x01auth=Bearer a\x01auth=Bearer b\x01\x01",  # twice
        b"n,b=x,\x01auth=Bearer t\x01\x01",
        b"n,a=bad=escape,\x01auth=Bearer t\x01\x01",
        b"n,,\x01auth=Bearer t t\x01\x01",
    ],
)
def test_oauthbearer_malformed(message: bytes) -> None:
    with pytest.raises(so.MalformedOAuthResponse):
        so.parse_oauthbearer(message)


def test_xoauth2() -> None:
    assert so.parse_xoauth2(b"user=martin\x01auth=Bearer tok\x01\x01") == so.BearerResponse(
        "tok", "martin"
    )
    assert so.parse_xoauth2(b"user=\x01auth=Bearer tok\x01\x01").authzid is None
    with pytest.raises(so.MalformedOAuthResponse):
        so.parse_xoauth2(b"user=martin\x01auth=tok\x01\x01")


def test_failure_challenges() -> None:
    body = json.loads(so.failure_challenge("OAUTHBEARER", "invalid_token", "openid", "https://i/x"))
    assert body == {
        "status": "invalid_token",
        "scope": "openid",
        "openid-configuration": "https://i/x",
    }
    assert json.loads(so.failure_challenge("XOAUTH2", "invalid_token", "s", "u"))["status"] == "401"


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_are_refused(data: bytes) -> None:
    for parse in so.PARSERS.values():
        with contextlib.suppress(so.MalformedOAuthResponse):
            parse(data)
