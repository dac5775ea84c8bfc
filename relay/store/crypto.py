"""Encryption at rest of message bodies: AES-256-GCM with a key file outside the database."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.errors import StoreError

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96-bit nonce, NIST SP 800-38D §8.2 recommendation for GCM
_VERSION = b"\x01"


def load_or_create_key(path: Path) -> tuple[bytes, bool]:
    """Read the key file, or create it (mode 0600, exclusive) if absent.

    Returns the key and whether it was created now. A key file readable by group or
    others is refused: whoever reads it reads every stored message.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        key = AESGCM.generate_key(bit_length=256)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        return key, True
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StoreError(
            f"{path}: key file is accessible to group or others (mode {oct(mode & 0o777)}); "
            "chmod 600 it"
        )
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise StoreError(f"{path}: key file must hold {KEY_BYTES} bytes, found {len(key)}")
    return key, False


class BlobCipher:
    """Seals and opens message bodies. Layout: version byte, nonce, ciphertext+tag."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise StoreError(f"blob key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    def seal(self, blob_id: str, plaintext: bytes | bytearray) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, blob_id.encode())

    def open(self, blob_id: str, sealed: bytes) -> bytes:
        if sealed[:1] != _VERSION:
            raise StoreError(f"blob {blob_id}: unknown format")
        nonce = sealed[1 : 1 + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, sealed[1 + NONCE_BYTES :], blob_id.encode())
        except Exception as exc:  # cryptography raises InvalidTag
            raise StoreError(f"blob {blob_id}: cannot be decrypted with this key") from exc
