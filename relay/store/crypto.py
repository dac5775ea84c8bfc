"""Encryption at rest of message bodies: AES-256-GCM with key files outside the database.

Key files hold 32 random bytes, mode 0600. Each key is known by a *key id*: the first
16 hex digits of its fingerprint, HMAC-SHA256(key, "mss-relay key fingerprint v1").
The fingerprint identifies a key without revealing it (HMAC is a PRF: it says nothing
about the key), so the database keeps it to tell "no key" from "wrong key"
(`relay.store.keys`).

Several blob keys can coexist (rotation): the *active* key in `storage.key_file` seals
new blobs; retired keys, kept read-only in the folder ``<key_file>.retired/`` as
``<key id>.key``, still open the blobs they sealed. A sealed blob names its key:

    v2: 0x02 | key id (8 bytes) | nonce (12) | ciphertext + GCM tag
        associated data: version byte + key id + blob id
    v1: 0x01 | nonce (12) | ciphertext + GCM tag      (before key ids; read only)
        associated data: blob id; opened with the store's first blob key

The blob id in the associated data means a ciphertext moved to another row does not
decrypt; the key id in it means a blob cannot be passed off as sealed by another key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.errors import StoreError

KEY_BYTES = 32  # AES-256
TAG_BYTES = 16  # GCM's full 128-bit tag, appended to the ciphertext
NONCE_BYTES = 12  # 96-bit nonce, NIST SP 800-38D §8.2 recommendation for GCM
KEY_ID_BYTES = 8
_V1 = b"\x01"
_V2 = b"\x02"
_FINGERPRINT_LABEL = b"mss-relay key fingerprint v1"


class KeyFileError(StoreError):
    """A key file exists but cannot be used (permissions, size, unreadable)."""


def key_fingerprint(key: bytes) -> str:
    """Keyed hash naming `key` (hex, 64 digits); safe to store next to the data."""
    return hmac.new(key, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """The short name of a key (16 hex digits), as written beside each sealed blob."""
    return key_fingerprint(key)[: 2 * KEY_ID_BYTES]


def retired_dir(key_file: Path) -> Path:
    """Where retired blob keys are kept: ``<key_file>.retired/<key id>.key``."""
    return key_file.with_name(key_file.name + ".retired")


def read_key_file(path: Path) -> bytes | None:
    """The key in `path`, or None if there is no such file.

    A key file readable or writable by group or others is refused: whoever reads it
    reads every stored message (or, for the audit key, can rewrite the audit trail).
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the key file ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise KeyFileError(f"{path}: not a regular file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: key file is accessible to group or others (mode {oct(mode & 0o777)}); "
            "chmod 600 it"
        )
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the key file ({exc.strerror})") from None
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"{path}: key file must hold {KEY_BYTES} bytes, found {len(key)}")
    return key


def create_key_file(path: Path) -> bytes:
    """Write a new random key to `path` (mode 0600, must not exist); fsync it."""
    key = AESGCM.generate_key(bit_length=256)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path}: exists already; not overwritten") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create the key file ({exc.strerror})") from None
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    # The directory entry too: a key that vanishes in a power cut loses every message.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return key


def read_retired_keys(key_file: Path) -> dict[str, bytes]:
    """Retired blob keys by key id (empty if there is no retired-keys folder).

    Each file must be named after the key it holds: a misnamed file is refused rather
    than guessed at.
    """
    folder = retired_dir(key_file)
    if not folder.is_dir():
        return {}
    out: dict[str, bytes] = {}
    for path in sorted(folder.glob("*.key")):
        key = read_key_file(path)
        assert key is not None
        kid = key_id(key)
        if path.stem != kid:
            raise KeyFileError(f"{path}: holds key {kid}; a retired key file is named <key id>.key")
        out[kid] = key
    return out


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The blob keys a store can use: one active (seals), any number read-only."""

    active: bytes
    others: Mapping[str, bytes] = field(default_factory=dict)
    # The key that opens v1 blobs (sealed before key ids existed): the store's first.
    legacy_id: str | None = None

    @property
    def active_id(self) -> str:
        return key_id(self.active)

    def get(self, kid: str) -> bytes | None:
        if kid == self.active_id:
            return self.active
        return self.others.get(kid)


class BlobCipher:
    """Seals and opens message bodies (layout in the module docstring)."""

    def __init__(self, keys: KeyRing | bytes) -> None:
        ring = keys if isinstance(keys, KeyRing) else KeyRing(keys)
        if len(ring.active) != KEY_BYTES:
            raise StoreError(f"blob key must be {KEY_BYTES} bytes")
        self.ring = ring
        self._active_header = _V2 + bytes.fromhex(ring.active_id)
        self._active = AESGCM(ring.active)
        self._aeads: dict[str, AESGCM] = {ring.active_id: self._active}

    @property
    def key_id(self) -> str:
        return self.ring.active_id

    def _aead(self, kid: str, blob_id: str) -> AESGCM:
        aead = self._aeads.get(kid)
        if aead is None:
            key = self.ring.get(kid)
            if key is None:
                raise StoreError(
                    f"blob {blob_id}: sealed with key {kid}, which is not in the key ring "
                    "(neither the key file nor a retired key)"
                )
            aead = self._aeads[kid] = AESGCM(key)
        return aead

    def seal(self, blob_id: str, plaintext: bytes | bytearray) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        header = self._active_header
        return header + nonce + self._active.encrypt(nonce, plaintext, header + blob_id.encode())

    def seal_later(self, blob_id: str, plaintext: bytes | bytearray) -> SealedStream:
        """`seal`, done while the sealed blob is written (SealedStream.pieces): a big
        message is then never held sealed whole beside its plaintext."""
        return SealedStream(self.ring.active, self._active_header, blob_id, plaintext)

    def open(self, blob_id: str, sealed: bytes) -> bytes:
        version = sealed[:1]
        if version == _V2:
            header = sealed[: 1 + KEY_ID_BYTES]
            kid = header[1:].hex()
            body = sealed[len(header) :]
            aad = header + blob_id.encode()
        elif version == _V1:
            kid = self.ring.legacy_id or self.ring.active_id
            body = sealed[1:]
            aad = blob_id.encode()
        else:
            raise StoreError(f"blob {blob_id}: unknown format")
        aead = self._aead(kid, blob_id)
        try:
            return aead.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], aad)
        except InvalidTag:
            raise StoreError(f"blob {blob_id}: cannot be decrypted with key {kid}") from None

    @staticmethod
    def sealed_key_id(sealed: bytes) -> str | None:
        """The key id a v2 blob names (None for a v1 blob)."""
        return sealed[1 : 1 + KEY_ID_BYTES].hex() if sealed[:1] == _V2 else None


class SealedStream:
    """A blob sealed as it is written: the same bytes as `BlobCipher.seal` (v2 layout,
    same associated data; AES-GCM run incrementally gives the ciphertext and tag
    `AESGCM.encrypt` gives), produced a piece at a time from the plaintext, which is
    kept (not copied) until the caller drops it. `len()` is the sealed size. Each
    `pieces()` seals anew under a fresh nonce: a write rolled back and done again
    (the writer retries a failed batch unit by unit) never reuses a nonce."""

    __slots__ = ("_aad", "_header", "_key", "plaintext")

    def __init__(self, key: bytes, header: bytes, blob_id: str, plaintext: bytes | bytearray):
        self._key = key
        self._header = header
        self._aad = header + blob_id.encode()
        self.plaintext = plaintext

    def __len__(self) -> int:
        return len(self._header) + NONCE_BYTES + len(self.plaintext) + TAG_BYTES

    def pieces(self, chunk_bytes: int) -> Iterator[bytes | memoryview]:
        """The sealed blob in order: header and nonce, the ciphertext `chunk_bytes` at
        a time (one buffer reused: each piece is valid until the next is asked for),
        the tag."""
        nonce = os.urandom(NONCE_BYTES)
        encryptor = Cipher(algorithms.AES(self._key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(self._aad)
        yield self._header + nonce
        out = bytearray(chunk_bytes + 15)  # update_into wants room for a block more
        plaintext, size, sealed = self.plaintext, len(self.plaintext), 0
        with memoryview(out) as buf:
            for start in range(0, size, chunk_bytes):
                # A slice (one chunk copied), not a view: a view would pin the
                # plaintext, which the store empties once written, for as long as an
                # interrupted writer's traceback keeps this generator alive.
                piece = plaintext[start : start + chunk_bytes]
                sealed += len(piece)
                n = encryptor.update_into(piece, buf)
                yield buf[:n]
        if sealed != size:  # emptied or changed meanwhile: never a short blob on disk
            raise StoreError("the message changed while it was being sealed")
        yield encryptor.finalize() + encryptor.tag
