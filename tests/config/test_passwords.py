"""argon2id hashing: round trip, wrong passwords, malformed hashes never raise."""

from __future__ import annotations

import pytest

from relay.identity.passwords import hash_password, is_argon2id_hash, verify_password


def test_round_trip() -> None:
    phc = hash_password("correct horse")
    assert phc.startswith("$argon2id$v=19$")
    assert "correct horse" not in phc
    assert is_argon2id_hash(phc)
    assert verify_password(phc, "correct horse")
    assert not verify_password(phc, "correct horse ")
    assert not verify_password(phc, "")


def test_salted() -> None:
    assert hash_password("same") != hash_password("same")


def test_unicode_password() -> None:
    phc = hash_password("mot de passe é€")
    assert verify_password(phc, "mot de passe é€")
    assert not verify_password(phc, "mot de passe e€")


@pytest.mark.parametrize(
    "phc",
    [
        "",
        "plaintext",
        "$argon2id$",
        "$argon2id$v=19$m=65536,t=3,p=4$!!!!!!!!!!!!!!!!$!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
        "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHRzb21lc2FsdA$ZGlnZXN0ZGlnZXN0ZGlnZXN0ZGlnZXN0ZGlnZXN0",
        # well-formed argon2i (not id) hash of "x"
        "$argon2i$v=19$m=65536,t=3,p=4$c29tZXNhbHRzb21lc2FsdA$ZGlnZXN0ZGlnZXN0ZGlnZXN0ZGlnZXN0ZGlnZXN0",
        # absurd costs are refused before any work is done
        "$argon2id$v=19$m=99999999,t=3,p=4$c29tZXNhbHRzb21lc2FsdA$ZGlnZXN0ZGlnZXN0ZGlnZXN0ZGlnZXN0ZGlnZXN0",
        "$argon2id$v=19$m=65536,t=999,p=4$c29tZXNhbHRzb21lc2FsdA$ZGlnZXN0ZGlnZXN0ZGlnZXN0ZGlnZXN0ZGlnZXN0",
    ],
)
def test_malformed_or_foreign_hash_is_false(phc: str) -> None:
    assert verify_password(phc, "x") is False


def test_is_argon2id_hash_rejects_other_variants() -> None:
    phc = hash_password("x")
    assert is_argon2id_hash(phc)
    assert not is_argon2id_hash(phc.replace("$argon2id$", "$argon2i$"))
    assert not is_argon2id_hash(phc.replace("v=19", "v=16"))
    assert not is_argon2id_hash(phc + "\n")
    # the same hash with its variant swapped does not verify either
    assert not verify_password(phc.replace("$argon2id$", "$argon2d$"), "x")
