"""Key files, the sealed-blob format and the decision of which keys a store opens with."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest

from relay.errors import StoreError
from relay.store.crypto import (
    BlobCipher,
    KeyFileError,
    KeyRing,
    create_key_file,
    key_fingerprint,
    key_id,
    read_key_file,
    read_retired_keys,
    retired_dir,
)
from relay.store.keys import KeyFiles, KeyKind, KeyPlan, KeyRefused, RegisteredKey, plan

A = b"a" * 32
B = b"b" * 32


def test_key_file_created_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "blob.key"
    key = create_key_file(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == key
    with pytest.raises(KeyFileError, match="exists already"):
        create_key_file(path)
    assert read_key_file(path) == key


def test_missing_key_file_reads_as_none(tmp_path: Path) -> None:
    assert read_key_file(tmp_path / "blob.key") is None
    assert not (tmp_path / "blob.key").exists()


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "blob.key"
    create_key_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="accessible to group or others"):
        read_key_file(path)


def test_truncated_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "blob.key"
    path.write_bytes(b"short")
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="must hold 32 bytes, found 5"):
        read_key_file(path)


def test_fingerprint_names_the_key_without_showing_it() -> None:
    assert key_fingerprint(A) != key_fingerprint(B)
    assert len(key_fingerprint(A)) == 64 and key_id(A) == key_fingerprint(A)[:16]
    assert A.hex() not in key_fingerprint(A)


def test_sealed_blob_names_its_key_and_binds_it() -> None:
    sealed = BlobCipher(A).seal("id1", b"hello")
    assert b"hello" not in sealed
    assert BlobCipher.sealed_key_id(sealed) == key_id(A)
    assert BlobCipher(A).open("id1", sealed) == b"hello"
    with pytest.raises(StoreError, match="not in the key ring"):
        BlobCipher(B).open("id1", sealed)
    with pytest.raises(StoreError, match="cannot be decrypted"):
        BlobCipher(A).open("id2", sealed)  # moved to another row


def test_rotation_new_key_seals_old_key_still_opens() -> None:
    old = BlobCipher(A).seal("id1", b"old")
    ring = KeyRing(B, {key_id(A): A})
    cipher = BlobCipher(ring)
    new = cipher.seal("id2", b"new")
    assert BlobCipher.sealed_key_id(new) == key_id(B)
    assert cipher.open("id1", old) == b"old"
    assert cipher.open("id2", new) == b"new"


def test_v1_blob_from_before_key_ids_opens_with_the_first_key() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = b"n" * 12
    v1 = b"\x01" + nonce + AESGCM(A).encrypt(nonce, b"legacy", b"id1")
    assert BlobCipher(A).open("id1", v1) == b"legacy"
    assert BlobCipher(KeyRing(B, {key_id(A): A}, legacy_id=key_id(A))).open("id1", v1) == b"legacy"
    with pytest.raises(StoreError, match="cannot be decrypted"):
        BlobCipher(B).open("id1", v1)


def test_retired_keys_are_read_by_id_and_misnamed_ones_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "blob.key"
    folder = retired_dir(key_file)
    assert folder.name == "blob.key.retired"
    assert read_retired_keys(key_file) == {}
    folder.mkdir()
    good = folder / f"{key_id(A)}.key"
    good.write_bytes(A)
    good.chmod(0o600)
    assert read_retired_keys(key_file) == {key_id(A): A}
    bad = folder / "0000000000000000.key"
    bad.write_bytes(B)
    bad.chmod(0o600)
    with pytest.raises(KeyFileError, match=f"holds key {key_id(B)}"):
        read_retired_keys(key_file)


# --- the decision, table-driven ---------------------------------------------------------

T0 = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)
BLOB_A = RegisteredKey(KeyKind.BLOB, key_id(A), T0)
AUDIT_B = RegisteredKey(KeyKind.AUDIT, key_id(B), T0)
BLOB_A_RETIRED = RegisteredKey(KeyKind.BLOB, key_id(A), T0, retired_at=T0)
BLOB_B = RegisteredKey(KeyKind.BLOB, key_id(B), T0)
OTHER = "f" * 16


def files(blob: str | None, audit: str | None, retired: frozenset[str] = frozenset()) -> KeyFiles:
    return KeyFiles(Path("/k/blob.key"), blob, Path("/k/audit.key"), audit, retired)


OK_CASES = [
    # (files, registered, has_blobs, may_create, plan)
    ("new store, serve", files(None, None), [], False, True, KeyPlan(True, True, True, True)),
    (
        "new store, keys made beforehand",
        files(key_id(A), key_id(B)),
        [],
        False,
        False,
        KeyPlan(register_blob=True, register_audit=True),
    ),
    ("usual start", files(key_id(A), key_id(B)), [BLOB_A, AUDIT_B], True, False, KeyPlan()),
    (
        "store from before fingerprints",
        files(key_id(A), None),
        [],
        True,
        True,
        KeyPlan(create_audit=True, register_blob=True, register_audit=True, check_sample=True),
    ),
    (
        "after rotation",
        files(key_id(B), key_id(B), frozenset({key_id(A)})),
        [BLOB_A_RETIRED, BLOB_B, RegisteredKey(KeyKind.AUDIT, key_id(B), T0)],
        True,
        False,
        KeyPlan(),
    ),
]


@pytest.mark.parametrize(
    ("key_files", "registered", "has_blobs", "may_create", "expected"),
    [case[1:] for case in OK_CASES],
    ids=[case[0] for case in OK_CASES],
)
def test_plan_opens(
    key_files: KeyFiles,
    registered: list[RegisteredKey],
    has_blobs: bool,
    may_create: bool,
    expected: KeyPlan,
) -> None:
    assert plan(key_files, registered, has_blobs=has_blobs, may_create=may_create) == expected


REFUSED = [
    # (name, files, registered, has_blobs, may_create, words every problem must hold)
    ("read-only command, new store", files(None, None), [], False, False, ["key init"]),
    (
        "key file deleted",
        files(None, key_id(B)),
        [BLOB_A, AUDIT_B],
        True,
        True,
        ["missing", key_id(A), "2026-01-05 09:00 UTC", "restore"],
    ),
    (
        "key file deleted before any message",
        files(None, key_id(B)),
        [BLOB_A, AUDIT_B],
        False,
        True,
        ["missing", key_id(A)],
    ),
    (
        "another key in the file",
        files(OTHER, key_id(B)),
        [BLOB_A, AUDIT_B],
        True,
        True,
        ["wrong message key", OTHER, key_id(A)],
    ),
    (
        "messages but no key (legacy)",
        files(None, None),
        [],
        True,
        True,
        ["already", "holds messages"],
    ),
    ("audit key deleted", files(key_id(A), None), [BLOB_A, AUDIT_B], True, True, ["audit key"]),
    (
        "audit key replaced",
        files(key_id(A), OTHER),
        [BLOB_A, AUDIT_B],
        True,
        True,
        ["wrong audit key", OTHER],
    ),
    (
        "retired key lost",
        files(key_id(B), key_id(B)),
        [BLOB_A_RETIRED, BLOB_B, RegisteredKey(KeyKind.AUDIT, key_id(B), T0)],
        True,
        True,
        ["retired message key", key_id(A), "blob.key.retired"],
    ),
    (
        "retired key put back as the active one",
        files(key_id(A), key_id(B), frozenset({key_id(A)})),
        [BLOB_A_RETIRED, BLOB_B, RegisteredKey(KeyKind.AUDIT, key_id(B), T0)],
        True,
        True,
        ["retired on 2026-01-05", key_id(B)],
    ),
]


@pytest.mark.parametrize(
    ("key_files", "registered", "has_blobs", "may_create", "words"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_plan_refuses_and_says_why(
    key_files: KeyFiles,
    registered: list[RegisteredKey],
    has_blobs: bool,
    may_create: bool,
    words: list[str],
) -> None:
    with pytest.raises(KeyRefused) as refused:
        plan(key_files, registered, has_blobs=has_blobs, may_create=may_create)
    text = str(refused.value)
    for word in words:
        assert word in text, (word, text)


def test_plan_names_every_problem_at_once() -> None:
    with pytest.raises(KeyRefused) as refused:
        plan(files(None, None), [BLOB_A, AUDIT_B], has_blobs=True, may_create=False)
    assert len(refused.value.problems) == 2
    assert "/k/blob.key" in refused.value.problems[0]
    assert "/k/audit.key" in refused.value.problems[1]


@pytest.mark.parametrize("size", [0, 5, 16, (2 << 20) + 3])
def test_a_stream_seal_opens_like_seal(size: int) -> None:
    """The piecewise seal of big messages (Store.accept, written by the store a chunk
    at a time) is the same format as `seal`: the same key named, opened by `open`,
    bound to its row; sealed again under a fresh nonce each time it is written."""
    plaintext = bytearray(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    cipher = BlobCipher(A)
    stream = cipher.seal_later("id1", plaintext)
    sealed = b"".join(bytes(p) for p in stream.pieces(1 << 20))
    again = b"".join(bytes(p) for p in stream.pieces(1000))
    assert len(sealed) == len(again) == len(stream) == len(cipher.seal("id1", plaintext))
    assert BlobCipher.sealed_key_id(sealed) == BlobCipher.sealed_key_id(
        cipher.seal("id1", plaintext)
    )
    assert cipher.open("id1", sealed) == cipher.open("id1", again) == plaintext
    assert sealed[9:21] != again[9:21]  # the nonce
    with pytest.raises(StoreError):
        cipher.open("id2", sealed)
    plaintext.clear()  # nothing holds a view of it between writes
