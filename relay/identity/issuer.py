"""The token issuer's keys and introspection: the I/O edge of token validation.

Keys come from the issuer's JWKS (RFC 7517), found through OpenID Connect Discovery
1.0 (`/.well-known/openid-configuration`, §4) over HTTPS with aiohttp, or from a file
for deployments without outbound HTTP. They are cached:

- after `jwks_max_age_seconds` the next login fetches them again (if that fails the
  old keys keep serving and the error is logged: an issuer outage does not lock
  everyone out at once);
- a token naming a key id the cache lacks (the issuer rotated its keys) triggers
  one fetch, shared by every login waiting on it, and at most one per
  `jwks_min_refetch_seconds`: a flood of tokens with made-up key ids costs the
  issuer one request per interval, not one per login.

Opaque (non-JWT) tokens are sent to RFC 7662 introspection when it is configured.
What a token must show is decided in `relay.identity.tokens` (pure).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from relay.config.model import IssuerConfig
from relay.errors import TokenRejected, UnknownSigningKey
from relay.identity import tokens
from relay.tls.context import https_client_context

log = structlog.get_logger("relay.issuer")

# A discovery document or a JWKS is a few kilobytes; refuse to buffer more.
MAX_DOCUMENT_BYTES = 1 << 20


class IssuerUnavailable(Exception):
    """Discovery, JWKS or introspection could not be read (network, HTTP, JSON)."""


@dataclass(frozen=True, slots=True)
class KeysFreshness:
    """What `status` shows: where the keys came from and how old they are."""

    source: str  # the JWKS URL or file
    key_ids: tuple[str, ...]
    age_seconds: float | None  # None: never loaded
    fetches: int
    last_error: str | None


def parse_jwks(data: bytes) -> KeySet:
    """A JWKS document → its signature keys; `IssuerUnavailable` if unusable."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise IssuerUnavailable("JWKS has no 'keys' array")
        # Private members would mean the issuer leaks its keys; we only keep public ones.
        keys = KeySet.import_key_set({"keys": doc["keys"]})
    except (ValueError, JoseError) as exc:
        raise IssuerUnavailable(f"unusable JWKS ({type(exc).__name__})") from None
    return keys


class IssuerKeys:
    """Verifies tokens for the issuer of the current config (`Authenticator.token`)."""

    def __init__(
        self,
        config: Callable[[], IssuerConfig | None],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._monotonic = monotonic
        self._wallclock = wallclock
        self._keys: KeySet | None = None
        self._loaded_for: IssuerConfig | None = None
        self._loaded_at: float | None = None  # monotonic time of the last good load
        self._kid_refetch_at: float | None = None  # last refetch for an unknown kid
        self._failed_at: float | None = None  # last failed load
        self._failed_for: IssuerConfig | None = None
        self._file_mtime: float | None = None
        self._jwks_uri: str | None = None
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._session_ca: Path | None = None
        self.fetches = 0  # JWKS loads (HTTP or file): tests and `status` read it
        self.last_error: str | None = None

    # --- what the authenticator calls --------------------------------------------

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims if the issuer's keys and `tokens` accept it; else
        `TokenRejected` with the reason."""
        cfg = self._config()
        if cfg is None:
            raise TokenRejected("no token issuer is configured")
        if not tokens.looks_like_jwt(token):
            if cfg.introspection_url is None:
                raise TokenRejected("opaque token and no introspection configured")
            return await self._introspect(cfg, token)
        tokens.peek_header(token)  # malformed tokens are refused before any fetch
        keys = await self._current_keys(cfg)
        try:
            return tokens.verify_jwt(token, keys, cfg, self._wallclock())
        except UnknownSigningKey:
            keys = await self._refetch_for_new_kid(cfg, keys)
            return tokens.verify_jwt(token, keys, cfg, self._wallclock())

    def freshness(self) -> KeysFreshness:
        cfg = self._config()
        source = "" if cfg is None else str(cfg.jwks_file or self._jwks_uri or cfg.discovery_url)
        kids = tuple(k.kid or "" for k in self._keys) if self._keys is not None else ()
        age = None if self._loaded_at is None else self._monotonic() - self._loaded_at
        return KeysFreshness(source, kids, age, self.fetches, self.last_error)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # --- the cache ---------------------------------------------------------------

    async def _current_keys(self, cfg: IssuerConfig) -> KeySet:
        now = self._monotonic()
        fresh = (
            self._keys is not None
            and self._loaded_for == cfg
            and self._loaded_at is not None
            and now - self._loaded_at < cfg.jwks_max_age_seconds
        )
        if fresh:
            assert self._keys is not None
            return self._keys
        async with self._lock:
            now = self._monotonic()
            # After a failed load, logins do not each wait for the issuer's timeout:
            # the next attempt is jwks_min_refetch_seconds later.
            backing_off = (
                self._failed_at is not None
                and now - self._failed_at < cfg.jwks_min_refetch_seconds
                and self._failed_for == cfg
            )
            if self._keys is None or self._loaded_for != cfg:
                # first use (or a reloaded issuer): must succeed
                if backing_off:
                    raise TokenRejected(f"issuer keys unavailable: {self.last_error}")
                await self._load(cfg)
            elif (
                self._loaded_at is not None
                and now - self._loaded_at >= cfg.jwks_max_age_seconds
                and not backing_off
            ):
                # stale keys keep serving; the error is logged and in status
                with contextlib.suppress(TokenRejected):
                    await self._load(cfg)
            assert self._keys is not None
            return self._keys

    async def _refetch_for_new_kid(self, cfg: IssuerConfig, seen: KeySet) -> KeySet:
        async with self._lock:
            if self._keys is not seen and self._keys is not None:
                return self._keys  # another login fetched while we waited
            last = self._kid_refetch_at
            if last is not None and self._monotonic() - last < cfg.jwks_min_refetch_seconds:
                return seen  # rate-limited: the token's kid stays unknown
            self._kid_refetch_at = self._monotonic()
            await self._load(cfg)
            assert self._keys is not None
            return self._keys

    async def _load(self, cfg: IssuerConfig) -> None:
        try:
            if cfg.jwks_file is not None:
                keys = await self._load_file(cfg.jwks_file)
            else:
                keys = await self._load_discovered(cfg)
        except IssuerUnavailable as exc:
            self.last_error = str(exc)
            self._failed_at, self._failed_for = self._monotonic(), cfg
            log.error("issuer.keys_unavailable", issuer=cfg.issuer, error=str(exc))
            raise TokenRejected(f"issuer keys unavailable: {exc}") from None
        self.fetches += 1
        self.last_error = None
        self._failed_at = None
        self._keys = keys
        self._loaded_for = cfg
        self._loaded_at = self._monotonic()
        log.info("issuer.keys_loaded", issuer=cfg.issuer, kids=[k.kid for k in keys])

    async def _load_file(self, path: Path) -> KeySet:
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise IssuerUnavailable(f"cannot read {path}: {exc.strerror or exc}") from None
        return parse_jwks(data)

    async def _load_discovered(self, cfg: IssuerConfig) -> KeySet:
        # Discovery is read again with the keys: a moved jwks_uri is followed.
        doc = await self._get_json(cfg, cfg.discovery_url)
        # OpenID Connect Discovery 1.0 §4.3: the document must name the same issuer.
        if doc.get("issuer") != cfg.issuer:
            raise IssuerUnavailable(
                f"discovery names issuer {doc.get('issuer')!r}, not {cfg.issuer!r}"
            )
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
            raise IssuerUnavailable("discovery has no https jwks_uri")
        self._jwks_uri = jwks_uri
        return parse_jwks(await self._get(cfg, jwks_uri))

    # --- HTTP (aiohttp) ------------------------------------------------------------

    def _http(self, cfg: IssuerConfig) -> aiohttp.ClientSession:
        if self._session is None or self._session_ca != cfg.ca_file or self._session.closed:
            old = self._session
            if old is not None and not old.closed:
                asyncio.get_running_loop().create_task(old.close())
            connector = aiohttp.TCPConnector(ssl=https_client_context(cfg.ca_file))
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=cfg.http_timeout_seconds),
                headers={"User-Agent": "mss-relay"},
            )
            self._session_ca = cfg.ca_file
        return self._session

    async def _read(self, resp: aiohttp.ClientResponse, url: str) -> bytes:
        if resp.status != 200:
            raise IssuerUnavailable(f"{url} answered HTTP {resp.status}")
        body = await resp.content.read(MAX_DOCUMENT_BYTES + 1)
        if len(body) > MAX_DOCUMENT_BYTES:
            raise IssuerUnavailable(f"{url} sent more than {MAX_DOCUMENT_BYTES} bytes")
        return body

    async def _get(self, cfg: IssuerConfig, url: str) -> bytes:
        try:
            async with self._http(cfg).get(url, allow_redirects=False) as resp:
                return await self._read(resp, url)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise IssuerUnavailable(f"{url}: {type(exc).__name__}: {exc}") from None

    async def _get_json(self, cfg: IssuerConfig, url: str) -> dict[str, Any]:
        return _json_object(await self._get(cfg, url), url)

    async def _introspect(self, cfg: IssuerConfig, token: str) -> dict[str, Any]:
        """RFC 7662 §2: POST the token with the client's credentials; an active answer
        is then checked like a JWT's claims."""
        assert cfg.introspection_url is not None and cfg.client_secret_file is not None
        if len(token) > tokens.MAX_TOKEN_CHARS:
            raise TokenRejected(f"token longer than {tokens.MAX_TOKEN_CHARS} characters")
        url = cfg.introspection_url
        try:
            secret = (await asyncio.to_thread(cfg.client_secret_file.read_text)).strip()
            # RFC 6749 §2.3.1: id and secret are form-urlencoded inside HTTP Basic.
            basic = aiohttp.encode_basic_auth(quote(cfg.client_id, safe=""), quote(secret, safe=""))
            async with self._http(cfg).post(
                url,
                data={"token": token, "token_type_hint": "access_token"},
                headers={"Authorization": basic},
                allow_redirects=False,
            ) as resp:
                answer = _json_object(await self._read(resp, url), url)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, IssuerUnavailable) as exc:
            log.error("issuer.introspection_failed", url=url, error=str(exc))
            raise TokenRejected(f"introspection failed: {exc}") from None
        # RFC 7662 §2.2: "active" is the one required member; inactive says nothing more.
        if answer.get("active") is not True:
            raise TokenRejected("introspection: token is not active")
        claims = dict(answer)
        # RFC 7662 §2.2 names the client "client_id"; a JWT says "azp".
        claims.setdefault("azp", answer.get("client_id"))
        tokens.check_claims(claims, cfg, self._wallclock())
        return claims


def _json_object(data: bytes, url: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        raise IssuerUnavailable(f"{url} did not send JSON") from None
    if not isinstance(doc, dict):
        raise IssuerUnavailable(f"{url} did not send a JSON object")
    return doc
