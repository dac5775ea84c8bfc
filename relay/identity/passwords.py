"""Password hashing: argon2id (RFC 9106) through argon2-cffi.

The config file holds only PHC strings (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`),
produced by `mss-relay passwd`. Hashing and verifying cost tens of milliseconds of CPU
and 64 MiB of memory on purpose: callers on the event loop run them in a thread
(`asyncio.to_thread`).
"""

from __future__ import annotations

import re

import argon2
from argon2.exceptions import Argon2Error, InvalidHashError

# argon2-cffi's defaults are RFC 9106 §4's second recommended ("low memory") profile:
# argon2id, t=3, m=64 MiB, p=4, 16-byte salt, 32-byte tag.
_HASHER = argon2.PasswordHasher()

# PHC string format, argon2id only, version 0x13 (RFC 9106 §3.1: v=19), unpadded
# standard base64 for salt and tag.
_ARGON2ID_PHC = re.compile(
    r"\$argon2id\$v=19\$m=(\d{1,10}),t=(\d{1,10}),p=(\d{1,10})\$[A-Za-z0-9+/]{11,}\$[A-Za-z0-9+/]{22,}"
)

# Upper bounds on the cost parameters a config may carry, so that a typo (or a
# malicious edit) cannot make each login allocate gigabytes or spin for seconds.
MAX_MEMORY_KIB = 1024 * 1024  # 1 GiB, RFC 9106 §4 first recommended profile uses 2 GiB
MAX_TIME_COST = 16
MAX_PARALLELISM = 64


def hash_password(password: str) -> str:
    """Hash `password` with argon2id and a fresh random salt; returns a PHC string."""
    return _HASHER.hash(password)


def is_argon2id_hash(phc: str) -> bool:
    """Whether `phc` is a well-formed argon2id PHC string with acceptable costs."""
    match = _ARGON2ID_PHC.fullmatch(phc)
    if match is None:
        return False
    memory, time_cost, parallelism = (int(g) for g in match.groups())
    # RFC 9106 §3.1: memory must be at least 8 KiB per lane.
    return (
        1 <= parallelism <= MAX_PARALLELISM
        and 8 * parallelism <= memory <= MAX_MEMORY_KIB
        and 1 <= time_cost <= MAX_TIME_COST
    )


def verify_password(phc: str, password: str) -> bool:
    """Whether `password` matches the argon2id hash `phc`.

    Never raises: a mismatch, a malformed hash or a hash of another Argon2 variant all
    give False.
    """
    if not is_argon2id_hash(phc):
        return False
    try:
        return _HASHER.verify(phc, password)
    except (Argon2Error, InvalidHashError):
        return False
