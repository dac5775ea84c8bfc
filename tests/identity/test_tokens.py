"""The pure token core: every refusal with its reason, table-driven, no I/O."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import KeySet

from relay.config.loader import load_text
from relay.config.model import IssuerConfig
from relay.errors import TokenRejected, UnknownSigningKey
from relay.identity import tokens
from relay.tls.pki import DevPki
from tests.issuer import CLIENT_ID, LEROY_ID, MARTIN_ID, LocalIssuer, new_key

ISSUER = "https://localhost:1/realms/test"


def config(**changes: Any) -> IssuerConfig:
    values: dict[str, Any] = {
        "issuer": ISSUER,
        "client_id": CLIENT_ID,
        "discovery_url": ISSUER + "/.well-known/openid-configuration",
        "jwks_file": None,
        "ca_file": None,
        "algorithms": ("RS256", "PS256", "ES256"),
        "identifier_claim": "preferred_username",
        "rpps_prefix": "8",
        "acr_levels": ("eidas1", "eidas2", "eidas3"),
        "minimum_acr": None,
        "scope": "openid",
    }
    values.update(changes)
    return IssuerConfig(**values)


@pytest.fixture
def issuer(dev_pki: DevPki) -> LocalIssuer:
    made = LocalIssuer(dev_pki)
    made.port = 1  # never served: only its keys and minting are used here
    return made


def keyset(issuer: LocalIssuer) -> KeySet:
    return KeySet.import_key_set({"keys": [k.as_dict(private=False) for k in issuer.keys]})


def test_a_good_token_gives_its_claims(issuer: LocalIssuer) -> None:
    claims = tokens.verify_jwt(issuer.mint(), keyset(issuer), config(), time.time())
    assert claims["preferred_username"] == MARTIN_ID


REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("expired", {"exp": -120}, "expired"),
    ("not yet valid", {"nbf": 600}, "not valid before"),
    ("issued in the future", {"iat": 600, "nbf": 0}, "in the future"),
    ("no exp", {"exp": None}, "no exp claim"),
    ("exp not a number", {"exp": "tomorrow"}, "not a NumericDate"),
    ("exp a boolean", {"exp": True}, "not a NumericDate"),
    ("wrong issuer", {"iss": "https://evil.example/realms/test"}, "not the configured issuer"),
    ("wrong audience", {"aud": "other-client", "azp": "other-client"}, "does not name client"),
    ("audience list without us", {"aud": ["a", "b"], "azp": None}, "does not name client"),
    ("no identifier", {"preferred_username": None}, "naming the person"),
]
TIMES = ("exp", "nbf", "iat")


@pytest.mark.parametrize(
    ("claims", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refused_claims(issuer: LocalIssuer, claims: dict[str, Any], reason: str) -> None:
    now = int(time.time())
    # times are offsets from now (booleans and strings stay as they are)
    absolute: dict[str, Any] = {
        k: now + v if k in TIMES and type(v) is int else v for k, v in claims.items()
    }
    token = issuer.mint(**absolute)
    with pytest.raises(TokenRejected) as info:
        verified = tokens.verify_jwt(token, keyset(issuer), config(), now)
        tokens.identifier(verified, config())
    assert reason in (info.value.log_detail or "")


def test_clock_skew_is_honoured_and_bounded(issuer: LocalIssuer) -> None:
    now = time.time()
    token = issuer.mint(exp=int(now) - 30)
    tokens.verify_jwt(token, keyset(issuer), config(clock_skew_seconds=60), now)
    with pytest.raises(TokenRejected, match="Authentication failed"):
        tokens.verify_jwt(token, keyset(issuer), config(clock_skew_seconds=10), now)


def test_audience_list_or_azp_names_the_client(issuer: LocalIssuer) -> None:
    for claims in ({"aud": ["x", CLIENT_ID], "azp": None}, {"aud": CLIENT_ID, "azp": None}):
        tokens.verify_jwt(issuer.mint(**claims), keyset(issuer), config(), time.time())


def test_minimum_acr(issuer: LocalIssuer) -> None:
    cfg = config(minimum_acr="eidas2")
    tokens.verify_jwt(issuer.mint(acr="eidas3"), keyset(issuer), cfg, time.time())
    for acr in ("eidas1", "something", None):
        with pytest.raises(TokenRejected) as info:
            tokens.verify_jwt(issuer.mint(acr=acr), keyset(issuer), cfg, time.time())
        assert info.value.status == tokens.INSUFFICIENT_AUTHENTICATION


def test_alg_none_is_refused(issuer: LocalIssuer) -> None:
    with pytest.raises(TokenRejected) as info:
        tokens.verify_jwt(issuer.mint_unsigned(), keyset(issuer), config(), time.time())
    assert info.value.log_detail == "signature algorithm 'none' is not allowed"


def test_hmac_with_the_public_key_is_refused(issuer: LocalIssuer) -> None:
    token = issuer.mint_hmac_confusion()
    with pytest.raises(TokenRejected) as info:
        tokens.verify_jwt(token, keyset(issuer), config(), time.time())
    assert info.value.log_detail == "signature algorithm 'HS256' is not allowed"
    # Even an allow-list that named HS256 (the loader refuses it) would not verify it:
    # joserfc will not use an RSA key as an HMAC secret.
    with pytest.raises(TokenRejected):
        tokens.verify_jwt(token, keyset(issuer), config(algorithms=("HS256",)), time.time())


def test_tampered_payload_is_refused(issuer: LocalIssuer) -> None:
    token = issuer.tamper(issuer.mint(), preferred_username=LEROY_ID)
    with pytest.raises(TokenRejected) as info:
        tokens.verify_jwt(token, keyset(issuer), config(), time.time())
    assert info.value.log_detail == "bad signature"


def test_signed_by_another_key_with_our_kid_is_refused(issuer: LocalIssuer) -> None:
    forged = issuer.mint(key=new_key("key-1"))  # same kid, attacker's key
    with pytest.raises(TokenRejected, match="Authentication failed") as info:
        tokens.verify_jwt(forged, keyset(issuer), config(), time.time())
    assert info.value.log_detail == "bad signature"


def test_unknown_kid_is_its_own_error(issuer: LocalIssuer) -> None:
    token = issuer.mint(key=new_key("key-new"))
    with pytest.raises(UnknownSigningKey) as info:
        tokens.verify_jwt(token, keyset(issuer), config(), time.time())
    assert info.value.kid == "key-new"


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 20_000, "é.é.é"])
def test_garbage_is_refused_not_crashed(issuer: LocalIssuer, token: str) -> None:
    with pytest.raises(TokenRejected):
        tokens.verify_jwt(token, keyset(issuer), config(), time.time())


def test_identifier_maps_to_people(tmp_path: Path) -> None:
    text = """
[server]
hostname = "localhost"
[[people]]
id = "martin"
rpps = "10001234567"
[[people]]
id = "dupont"
national_id = "3123456789/D1"
[issuer]
issuer = "https://localhost/realms/test"
client_id = "c"
"""
    cfg = load_text(text, tmp_path / "relay.toml")
    assert cfg.issuer is not None
    assert tokens.person_for(cfg, cfg.issuer, MARTIN_ID).id == "martin"
    assert tokens.person_for(cfg, cfg.issuer, "3123456789/D1").id == "dupont"
    with pytest.raises(TokenRejected, match="Authentication failed") as info:
        tokens.person_for(cfg, cfg.issuer, "810000000000")
    assert "names no person" in (info.value.log_detail or "")
    # the bare RPPS, without the national prefix, names nobody
    with pytest.raises(TokenRejected):
        tokens.person_for(cfg, cfg.issuer, "10001234567")
