"""A TEST token issuer for the demo: a signing key and its public JWKS beside the dev
PKI, and `mss-relay dev-token PERSON` to mint a short-lived access token with it.

The daemon only ever reads the public JWKS (`issuer.jwks_file`): the demo needs no
outbound HTTP. The private key stays in var/ (`issuer.dev_signing_key`, 0600) and is
read by `dev-token` alone. Never for production: real tokens come from the issuer.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from relay.config.model import Config
from relay.identity.tokens import token_identifiers

KEY_FILE = "issuer-dev.key.json"
JWKS_FILE = "issuer-dev.jwks.json"
DEV_TOKEN_LIFETIME_SECONDS = 600  # short-lived, like a real access token
MAX_DEV_TOKEN_LIFETIME_SECONDS = 86_400  # a test token never outlives a day


class DevTokenError(Exception):
    """Why no token can be minted (shown to the CLI user as is)."""


def write_dev_issuer(directory: Path) -> tuple[Path, Path]:
    """A fresh RSA signing key (`KEY_FILE`, 0600) and its public JWKS (`JWKS_FILE`)."""
    directory.mkdir(parents=True, exist_ok=True)
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = f"dev-{secrets.token_hex(4)}"
    key = RSAKey.import_key(private, parameters={"kid": kid, "use": "sig", "alg": "RS256"})
    key_path, jwks_path = directory / KEY_FILE, directory / JWKS_FILE
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(key.as_dict(private=True), out)
    jwks_path.write_text(json.dumps({"keys": [key.as_dict(private=False)]}, indent=1) + "\n")
    return key_path, jwks_path


def mint_dev_token(
    config: Config, person_ref: str, *, lifetime_seconds: int = DEV_TOKEN_LIFETIME_SECONDS
) -> str:
    """An access token for `person_ref` (id or login), as the configured issuer would
    sign it; DevTokenError says what is missing."""
    issuer = config.issuer
    if issuer is None:
        raise DevTokenError(f"{config.path}: no [issuer] section: tokens are not enabled")
    if issuer.dev_signing_key is None:
        raise DevTokenError(
            f"{config.path}: issuer.dev_signing_key is not set: only a test issuer's "
            "tokens can be minted here (real ones come from the issuer)"
        )
    person = config.person(person_ref) or config.person_by_login(person_ref)
    if person is None:
        raise DevTokenError(f"{person_ref}: no such person in {config.path}")
    ids = token_identifiers(person, issuer)
    if not ids:
        raise DevTokenError(
            f"{person.id} has neither an rpps nor a national_id: no token can name them"
        )
    try:
        key = RSAKey.import_key(json.loads(issuer.dev_signing_key.read_text(encoding="utf-8")))
    except OSError as exc:
        raise DevTokenError(
            f"{issuer.dev_signing_key}: cannot read: {exc.strerror or exc} "
            "(run `mss-relay dev-issuer DIR`)"
        ) from None
    except (ValueError, JoseError):
        raise DevTokenError(f"{issuer.dev_signing_key}: not a private RSA JWK") from None
    if not key.is_private:
        raise DevTokenError(f"{issuer.dev_signing_key}: holds no private key")
    now = int(time.time())
    claims = {
        "iss": issuer.issuer,
        "aud": issuer.client_id,
        "azp": issuer.client_id,
        "sub": person.id,
        issuer.identifier_claim: ids[0],
        "iat": now,
        "nbf": now,
        "exp": now + lifetime_seconds,
        "acr": issuer.minimum_acr or issuer.acr_levels[0],
        "jti": secrets.token_hex(8),
    }
    return jwt.encode({"alg": "RS256", "typ": "JWT", "kid": key.kid}, claims, key)
