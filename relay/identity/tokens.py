"""Access tokens from the configured OpenID Connect issuer (Pro Santé Connect): is
this token good, and whom does it name? Pure: no I/O, no clock of its own.

The edge (`relay.identity.issuer`) fetches and caches the issuer's keys (JWKS) and
calls `verify_jwt` with them and the current time; an opaque token goes to RFC 7662
introspection there and its answer is checked here by `check_claims` alike.

What a token must show, in this order, each failure with its own audited reason:
1. a JWS compact serialisation (RFC 7515 §7.1) whose `alg` is in the configured
   allow-list: never `none` (RFC 7518 §3.6, RFC 8725 §3.1), never HMAC (an attacker
   would "sign" with the issuer's *public* key as the secret, RFC 8725 §2.1);
2. a `kid` the issuer's JWKS holds (the edge refetches once on an unknown one), a
   signature that key verifies (joserfc; the key type must fit the algorithm);
3. `iss` equal to the configured issuer (RFC 7519 §4.1.1, RFC 9068 §4);
4. `aud` containing the client id, or `azp` equal to it (OpenID Connect Core §2:
   Keycloak-based issuers put the client in `azp` of access tokens);
5. `exp` in the future, `nbf` and `iat` not in the future, each with the configured
   clock skew (RFC 7519 §4.1.4-4.1.6);
6. `acr` at least the configured minimum (OpenID Connect Core §2), when one is set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import Key, KeySet

from relay.config.model import Config, IssuerConfig, Person
from relay.errors import TokenRejected, UnknownSigningKey

# RFC 6750 §3.1 error codes (the "status" of RFC 7628 §3.2.2), RFC 9470 §3 for acr.
INVALID_TOKEN = "invalid_token"  # noqa: S105 (an error code)
INSUFFICIENT_AUTHENTICATION = "insufficient_user_authentication"

# A JWS compact token is three base64url parts; a Pro Santé Connect access token is a
# few kilobytes. Anything far larger is refused before any parsing.
MAX_TOKEN_CHARS = 16_384


@dataclass(frozen=True, slots=True)
class TokenHeader:
    alg: str
    kid: str | None


def looks_like_jwt(token: str) -> bool:
    """Whether `token` has the shape of a JWS compact serialisation (else: opaque)."""
    return token.count(".") == 2


def peek_header(token: str) -> TokenHeader:
    """The protected header, read without verifying anything (to pick the key)."""
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenRejected(f"token longer than {MAX_TOKEN_CHARS} characters")
    try:
        header = jws.extract_compact(token.encode("ascii")).headers()
    except (JoseError, ValueError, UnicodeError):
        raise TokenRejected("not a well-formed signed JWT") from None
    alg = header.get("alg")
    kid = header.get("kid")
    if not isinstance(alg, str) or (kid is not None and not isinstance(kid, str)):
        raise TokenRejected("JWT header without a valid alg or kid")
    return TokenHeader(alg, kid)


def verify_jwt(token: str, keys: KeySet, cfg: IssuerConfig, now: float) -> dict[str, Any]:
    """Verify signature and claims; return the claims. Raises `TokenRejected`
    (`UnknownSigningKey` when the kid is not among `keys`)."""
    header = peek_header(token)
    if header.alg not in cfg.algorithms:
        raise TokenRejected(f"signature algorithm {header.alg!r} is not allowed")
    key = _key_for(keys, header)
    try:
        decoded = jwt.decode(token, key, algorithms=list(cfg.algorithms))
    except BadSignatureError:
        raise TokenRejected("bad signature") from None
    except (JoseError, ValueError) as exc:
        raise TokenRejected(f"unusable token ({type(exc).__name__})") from None
    claims = dict(decoded.claims)
    check_claims(claims, cfg, now)
    return claims


def _key_for(keys: KeySet, header: TokenHeader) -> Key:
    sig_keys = [k for k in keys if k.get("use", "sig") == "sig"]
    if header.kid is None:
        # RFC 7515 §4.1.4: kid is optional; without it only a one-key set is unambiguous.
        if len(sig_keys) == 1:
            return sig_keys[0]
        raise TokenRejected("JWT header has no kid and the issuer has several keys")
    for key in sig_keys:
        if key.kid == header.kid:
            return key
    raise UnknownSigningKey(header.kid)


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # RFC 7519 §2 NumericDate: a JSON number (not a boolean, not NaN or infinite)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenRejected(f"claim {name!r} is not a NumericDate")
    return float(value)


def check_claims(claims: Mapping[str, Any], cfg: IssuerConfig, now: float) -> None:
    """Checks 3 to 6 of the module docstring; raises `TokenRejected` with the reason."""
    iss = claims.get("iss")
    if iss != cfg.issuer:
        raise TokenRejected(f"issuer {iss!r} is not the configured issuer")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if cfg.client_id not in audiences and claims.get("azp") != cfg.client_id:
        raise TokenRejected(
            f"audience {aud!r} / azp {claims.get('azp')!r} does not name client {cfg.client_id!r}"
        )
    skew = cfg.clock_skew_seconds
    exp = _number(claims, "exp")
    if exp is None:
        raise TokenRejected("no exp claim: a token must expire")
    if now >= exp + skew:
        raise TokenRejected(f"expired {int(now - exp)} s ago")
    nbf = _number(claims, "nbf")
    if nbf is not None and now + skew < nbf:
        raise TokenRejected(f"not valid before {int(nbf - now)} s from now")
    iat = _number(claims, "iat")
    if iat is not None and now + skew < iat:
        raise TokenRejected(f"issued {int(iat - now)} s in the future")
    if cfg.minimum_acr is not None:
        acr = claims.get("acr")
        levels = cfg.acr_levels
        if not isinstance(acr, str) or acr not in levels:
            raise TokenRejected(
                f"authentication level (acr) {acr!r} is not one of {', '.join(levels)}",
                status=INSUFFICIENT_AUTHENTICATION,
            )
        if levels.index(acr) < levels.index(cfg.minimum_acr):
            raise TokenRejected(
                f"authentication level {acr!r} is below the required {cfg.minimum_acr!r}",
                status=INSUFFICIENT_AUTHENTICATION,
            )


def identifier(claims: Mapping[str, Any], cfg: IssuerConfig) -> str:
    """The value of the configured identifier claim (the professional's national id)."""
    value = claims.get(cfg.identifier_claim)
    if not isinstance(value, str) or not value:
        raise TokenRejected(f"no {cfg.identifier_claim!r} claim naming the person")
    return value


def token_identifiers(person: Person, cfg: IssuerConfig) -> tuple[str, ...]:
    """The identifier values that name `person` in a token."""
    ids: list[str] = []
    if person.national_id:
        ids.append(person.national_id)
    if person.rpps:
        ids.append(cfg.rpps_prefix + person.rpps)
    return tuple(ids)


def person_for(config: Config, cfg: IssuerConfig, ident: str) -> Person:
    """The person a token's identifier names; `TokenRejected` when nobody here."""
    for person in config.people:
        if ident in token_identifiers(person, cfg):
            return person
    raise TokenRejected(f"identifier {ident!r} names no person of this server")
