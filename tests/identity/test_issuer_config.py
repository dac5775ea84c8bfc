"""`[issuer]` and `auth.methods` in the config: every mistake named with its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config.loader import ConfigError, load_text
from relay.config.model import AuthMethod

BASE = """
[server]
hostname = "localhost"
[[people]]
id = "martin"
rpps = "10001234567"
{person}
[[mailboxes]]
address = "logiciel@cpts.example"
type = "APP"
owner = "martin"
{box}
"""
ISSUER = """
[issuer]
issuer = "https://auth.example/realms/x"
client_id = "relay"
{issuer}
"""


def problems(tmp_path: Path, *, person: str = "", box: str = "", issuer: str | None = "") -> str:
    text = BASE.format(person=person, box=box)
    if issuer is not None:
        text += ISSUER.format(issuer=issuer)
    with pytest.raises(ConfigError) as info:
        load_text(text, tmp_path / "relay.toml")
    return "\n".join(str(p) for p in info.value.problems)


def test_defaults(tmp_path: Path) -> None:
    config = load_text(BASE.format(person="", box="") + ISSUER.format(issuer=""), tmp_path / "r")
    assert config.issuer is not None
    assert (
        config.issuer.discovery_url
        == "https://auth.example/realms/x/.well-known/openid-configuration"
    )
    assert config.issuer.algorithms == ("RS256", "PS256", "ES256")
    assert config.issuer.identifier_claim == "preferred_username"
    assert config.people[0].auth_methods == frozenset(AuthMethod)


@pytest.mark.parametrize(
    ("issuer", "expected"),
    [
        ('algorithms = ["none"]', 'issuer.algorithms[0]: "none" means an unsigned token'),
        ('algorithms = ["HS256"]', 'issuer.algorithms[0]: "HS256" is HMAC'),
        ('minimum_acr = "eidas9"', "issuer.minimum_acr: 'eidas9' is not in acr_levels"),
        (
            'introspection_url = "https://auth.example/i"',
            "issuer.client_secret_file: introspection_url needs",
        ),
        (
            'discovery_url = "http://auth.example/x"',
            "issuer.discovery_url: must be an https:// URL",
        ),
        (
            "clock_skew_seconds = 3600",
            "issuer.clock_skew_seconds: must be an integer from 0 to 300",
        ),
        ("jwks_min_refetch_seconds = 0", "issuer.jwks_min_refetch_seconds: must be an integer"),
        ('client_secret = "x"', "issuer.client_secret: unknown key"),
    ],
)
def test_issuer_mistakes(tmp_path: Path, issuer: str, expected: str) -> None:
    assert expected in problems(tmp_path, issuer=issuer)


def test_issuer_must_be_https(tmp_path: Path) -> None:
    text = BASE.format(person="", box="") + '[issuer]\nissuer = "http://x"\nclient_id = "c"\n'
    with pytest.raises(ConfigError, match=r"issuer\.issuer: must be an https:// URL"):
        load_text(text, tmp_path / "r")


def test_method_mistakes(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        person='auth.methods = ["token", "sms"]',
        box='auth.methods = ["token"]',
        issuer=None,
    )
    assert 'people[0].auth.methods[1]: expected one of "password", "certificate", "token"' in found
    assert "mailboxes[0].auth.methods: an APP box is used by practice software" in found


def test_token_only_needs_an_issuer(tmp_path: Path) -> None:
    found = problems(tmp_path, person='auth.methods = ["token"]', issuer=None)
    assert 'people[0].auth.methods: only "token" is allowed but no [issuer]' in found


def test_two_people_one_identifier(tmp_path: Path) -> None:
    found = problems(tmp_path, person='[[people]]\nid = "x"\nnational_id = "810001234567"')
    assert 'token identifier "810001234567" also names "martin"' in found
