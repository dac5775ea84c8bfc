"""SASL OAUTHBEARER (RFC 7628) and XOAUTH2 messages, shared by IMAP and SMTP. Pure.

Both carry a bearer token (RFC 6750) and an optional authorization identity: the box
to act as, exactly like PLAIN's authzid (or `person*box`). A refused token is answered
with a challenge holding a JSON error (RFC 7628 §3.2.2); the client then sends a
dummy response (a lone %x01 for OAUTHBEARER, an empty one for XOAUTH2) and gets the
final failure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

OAUTHBEARER = "OAUTHBEARER"
XOAUTH2 = "XOAUTH2"
MECHANISMS = (OAUTHBEARER, XOAUTH2)

_KVSEP = b"\x01"
# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_BEARER = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9._~+/-]+=*)")
# RFC 7628 §3.1: key = 1*(ALPHA); value = *(VCHAR / SP / HTAB / CR / LF)
_KVPAIR = re.compile(rb"([A-Za-z]+)=([\x21-\x7e \t\r\n]*)")


class MalformedOAuthResponse(ValueError):
    """The client's SASL message does not follow the mechanism's grammar."""


@dataclass(frozen=True, slots=True)
class BearerResponse:
    token: str
    authzid: str | None  # None: act as oneself


def _saslname(raw: bytes) -> str:
    # RFC 5801 §4: "," is sent as "=2C" and "=" as "=3D"; any other "=" is an error.
    if re.search(rb"=(?!2C|3D)", raw):
        raise MalformedOAuthResponse("bad escape in the authorization identity")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedOAuthResponse("authorization identity is not UTF-8") from None
    return text.replace("=2C", ",").replace("=3D", "=")


def _pairs(data: bytes) -> dict[bytes, bytes]:
    # kvpairs, then the final kvsep: "k=v\x01k=v\x01\x01"
    if not data.endswith(_KVSEP + _KVSEP) and data != _KVSEP:
        raise MalformedOAuthResponse("message does not end with two %x01")
    pairs: dict[bytes, bytes] = {}
    for item in data[:-2].split(_KVSEP) if data != _KVSEP else []:
        match = _KVPAIR.fullmatch(item)
        if match is None:
            raise MalformedOAuthResponse("malformed key=value pair")
        if match.group(1) in pairs:
            raise MalformedOAuthResponse("key given twice")
        pairs[match.group(1)] = match.group(2)
    return pairs


def _bearer(pairs: dict[bytes, bytes]) -> str:
    auth = pairs.get(b"auth")
    if auth is None:
        raise MalformedOAuthResponse("no auth=Bearer value")
    match = _BEARER.fullmatch(auth)
    if match is None:
        raise MalformedOAuthResponse("auth is not 'Bearer <token>'")
    return match.group(1).decode("ascii")


def parse_oauthbearer(data: bytes) -> BearerResponse:
    """RFC 7628 §3.1: gs2-header kvsep *kvpair kvsep (host and port are ignored)."""
    header, sep, rest = data.partition(b",")
    if not sep or header not in (b"n", b"y"):
        # "p=..." asks for channel binding, which OAUTHBEARER never uses (§3.1).
        raise MalformedOAuthResponse("GS2 header must start with 'n,' or 'y,'")
    authzid_part, sep, rest = rest.partition(b",")
    if not sep or not rest.startswith(_KVSEP):
        raise MalformedOAuthResponse("GS2 header is not followed by %x01")
    authzid: str | None = None
    if authzid_part:
        if not authzid_part.startswith(b"a="):
            raise MalformedOAuthResponse("GS2 authzid must be 'a=...'")
        # curl sends "a=," when it has no user name: that asks for nothing.
        authzid = _saslname(authzid_part[2:]) or None
    return BearerResponse(_bearer(_pairs(rest[1:])), authzid)


def parse_xoauth2(data: bytes) -> BearerResponse:
    """XOAUTH2 (Google's, also Microsoft's): "user=" user %x01 "auth=Bearer " token
    %x01 %x01. The user is the account name: a login, `person*box` or a box."""
    pairs = _pairs(data)
    user_raw = pairs.get(b"user", b"")
    try:
        user = user_raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedOAuthResponse("user is not UTF-8") from None
    return BearerResponse(_bearer(pairs), user or None)


PARSERS: dict[str, Callable[[bytes], BearerResponse]] = {
    OAUTHBEARER: parse_oauthbearer,
    XOAUTH2: parse_xoauth2,
}


def failure_challenge(mechanism: str, status: str, scope: str, discovery_url: str) -> bytes:
    """The server's error message (sent base64-encoded in a challenge).

    RFC 7628 §3.2.2: {"status": ..., "scope": ..., "openid-configuration": ...}.
    XOAUTH2 clients expect Google's form, an HTTP status and the schemes.
    """
    if mechanism == XOAUTH2:
        body = {"status": "401", "schemes": "bearer", "scope": scope}
    else:
        body = {"status": status, "scope": scope, "openid-configuration": discovery_url}
    return json.dumps(body, separators=(",", ":")).encode("ascii")
