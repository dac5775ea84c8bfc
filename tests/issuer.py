"""A local OpenID Connect issuer for token tests: keys made with `cryptography`, the
discovery document, the JWKS and RFC 7662 introspection served over HTTPS on
127.0.0.1 with the dev PKI's server certificate (aiohttp), tokens minted per test.

It counts the requests it answers, so a test can prove that a rotated key is fetched
once and not once per login.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import RSAKey

from relay.tls.pki import DevPki
from tests.harness import free_ports

CLIENT_ID = "mss-relay-test"
CLIENT_SECRET = "introspection-secret"
SCOPE = "openid scope_all"
MARTIN_ID = "810001234567"  # "8" + martin's RPPS in tests.harness
LEROY_ID = "810009876543"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_key(kid: str) -> RSAKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return RSAKey.import_key(private, parameters={"kid": kid, "use": "sig", "alg": "RS256"})


@dataclass
class LocalIssuer:
    """The test OpenID provider. `start()` binds a free port; `url` is the issuer."""

    pki: DevPki
    keys: list[RSAKey] = field(default_factory=lambda: [new_key("key-1")])
    requests: Counter[str] = field(default_factory=Counter)
    opaque: dict[str, dict[str, Any]] = field(default_factory=dict)  # introspection
    port: int = 0
    broken: bool = False  # discovery answers 503 (an issuer outage)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}/realms/test"

    @property
    def discovery_url(self) -> str:
        return f"{self.url}/.well-known/openid-configuration"

    def config(self, **overrides: str | int) -> str:
        """The `[issuer]` table for the daemon's config."""
        values: dict[str, str | int] = {
            "issuer": self.url,
            "client_id": CLIENT_ID,
            "ca_file": str(self.pki.ca_bundle),
            "scope": SCOPE,
            "jwks_min_refetch_seconds": 60,
        }
        values.update(overrides)
        lines = ["[issuer]"]
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
        return "\n".join(lines) + "\n"

    # --- serving -------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/realms/test/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/realms/test/certs", self._jwks)
        app.router.add_post("/realms/test/introspect", self._introspect)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.pki.server_cert), str(self.pki.server_key))
        self.port = free_ports(1)[0]
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ctx)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _discovery(self, request: web.Request) -> web.Response:
        self.requests["discovery"] += 1
        if self.broken:
            return web.json_response({"error": "unavailable"}, status=503)
        return web.json_response(
            {
                "issuer": self.url,
                "jwks_uri": f"{self.url}/certs",
                "introspection_endpoint": f"{self.url}/introspect",
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.requests["jwks"] += 1
        return web.json_response({"keys": [k.as_dict(private=False) for k in self.keys]})

    async def _introspect(self, request: web.Request) -> web.Response:
        self.requests["introspect"] += 1
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "invalid_client"}, status=401)
        form = await request.post()
        token = form.get("token")
        claims = self.opaque.get(token) if isinstance(token, str) else None
        if claims is None:
            return web.json_response({"active": False})
        return web.json_response({"active": True, **claims})

    # --- keys and tokens -------------------------------------------------------------

    def rotate(self, *, keep_old: bool = True) -> RSAKey:
        """A new signing key (the issuer's rotation); the old one stays published
        unless `keep_old` is false."""
        key = new_key(f"key-{len(self.keys) + 1}")
        self.keys = [*self.keys, key] if keep_old else [key]
        return key

    def claims(self, identifier: str = MARTIN_ID, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": "account",
            "azp": CLIENT_ID,
            "sub": secrets.token_hex(8),
            "preferred_username": identifier,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "acr": "eidas1",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self,
        identifier: str = MARTIN_ID,
        *,
        key: RSAKey | None = None,
        kid: str | None = None,
        **overrides: Any,
    ) -> str:
        """A signed access token (RS256) for `identifier`; claims overridable (None
        removes one)."""
        key = key or self.keys[-1]
        header = {"alg": "RS256", "typ": "JWT", "kid": kid or key.kid}
        return jwt.encode(header, self.claims(identifier, **overrides), key)

    def mint_unsigned(self, identifier: str = MARTIN_ID) -> str:
        """`alg: none` (RFC 7518 §3.6): no signature at all."""
        header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        payload = b64url(json.dumps(self.claims(identifier)).encode())
        return f"{header}.{payload}."

    def mint_hmac_confusion(self, identifier: str = MARTIN_ID) -> str:
        """HS256 "signed" with the issuer's *public* key as the HMAC secret: the
        key-confusion attack on verifiers that take the algorithm from the token."""
        key = self.keys[-1]
        secret = key.as_bytes(private=False)
        header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
        payload = b64url(json.dumps(self.claims(identifier)).encode())
        signing_input = f"{header}.{payload}".encode()
        sig = hmac.new(secret, signing_input, hashlib.sha256).digest()
        return f"{header}.{payload}.{b64url(sig)}"

    def tamper(self, token: str, **changes: Any) -> str:
        """The same signature over a payload with `changes` (e.g. another person)."""
        header, payload, sig = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims.update(changes)
        return f"{header}.{b64url(json.dumps(claims).encode())}.{sig}"


def oauthbearer(token: str, authzid: str = "") -> bytes:
    """RFC 7628 §3.1 client response (what curl and Thunderbird send)."""
    a = f"a={authzid}" if authzid else ""
    return f"n,{a},\x01host=localhost\x01port=993\x01auth=Bearer {token}\x01\x01".encode()


def xoauth2(token: str, user: str = "") -> bytes:
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
