"""Which keys a store opens with, and who may create one.

A store depends on two kinds of key, each in a file outside the database: the *blob
key* (AES-256-GCM, message bodies; `storage.key_file`, plus retired blob keys kept for
reading) and the *audit key* (HMAC-SHA256 of the audit chain; `storage.audit_key_file`).
The database keeps each key's fingerprint (`relay.store.crypto.key_fingerprint`) in
`store_keys`, so that a missing key file and a wrong one are told apart and named.

Who may create a key: only `mss-relay key init` and `mss-relay serve` (`may_create`),
and a blob key only for a store that holds no message and has no key yet. Every other
command (`audit show`, `queue list`, ...) opens the store with the keys it has or
refuses with the reason; a missing key file is never quietly replaced, since a fresh
key opens none of the messages already stored.

`plan()` is the decision, pure and table-tested; `settle()` applies it inside one
transaction that the store serialises (SQLite's write lock, a PostgreSQL advisory
lock): two nodes starting at once on an empty PostgreSQL register one key, and the
second finds it and refuses its own.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.audit.events import AuditEvent, KeyCreated, KeyRegistered
from relay.config.model import StorageConfig
from relay.errors import StoreError
from relay.store import schema as t
from relay.store.crypto import (
    BlobCipher,
    KeyRing,
    create_key_file,
    key_fingerprint,
    key_id,
    read_key_file,
    read_retired_keys,
    retired_dir,
)


class KeyKind(enum.StrEnum):
    BLOB = "blob"
    AUDIT = "audit"


class KeyRefused(StoreError):
    """The store cannot be opened with the key files there are; `problems` says why."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True, slots=True)
class RegisteredKey:
    """A `store_keys` row."""

    kind: KeyKind
    key_id: str
    created_at: dt.datetime
    retired_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class KeyFiles:
    """What the key files hold, as key ids (None: no such file)."""

    blob_path: Path
    blob_id: str | None
    audit_path: Path
    audit_id: str | None
    retired_ids: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class KeyPlan:
    """What to do before the store is used."""

    create_blob: bool = False
    create_audit: bool = False
    register_blob: bool = False  # record the key file's fingerprint
    register_audit: bool = False
    # A store with messages but no registered key (from before fingerprints): prove
    # that the key file opens a stored message before registering it.
    check_sample: bool = False


INIT_HINT = "create it with `mss-relay key init --config FILE` (or start the daemon once)"


def _when(r: RegisteredKey) -> str:
    return r.created_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def plan(
    files: KeyFiles,
    registered: Sequence[RegisteredKey],
    *,
    has_blobs: bool,
    may_create: bool,
) -> KeyPlan:
    """Decide, or raise KeyRefused naming every problem (see the module docstring)."""
    problems: list[str] = []
    steps: dict[str, bool] = {}
    blob_keys = [r for r in registered if r.kind is KeyKind.BLOB]
    audit_keys = [r for r in registered if r.kind is KeyKind.AUDIT]
    restore = "restore it from your key backup; mss-relay never replaces a key a store uses"

    if blob_keys:
        known = {r.key_id: r for r in blob_keys}
        active = [r for r in blob_keys if r.retired_at is None]
        expected = ", ".join(f"{r.key_id} (registered {_when(r)})" for r in active) or "none"
        if files.blob_id is None:
            problems.append(
                f"{files.blob_path}: the message key file is missing. This store's messages "
                f"are sealed with key {expected}; without it they cannot be read: {restore}"
            )
        elif files.blob_id not in known:
            problems.append(
                f"{files.blob_path}: wrong message key: the file holds key {files.blob_id}, "
                f"but this store's messages are sealed with key {expected}. Put back the "
                "right key file (from your key backup)"
            )
        elif known[files.blob_id].retired_at is not None:
            problems.append(
                f"{files.blob_path}: holds key {files.blob_id}, retired on "
                f"{known[files.blob_id].retired_at:%Y-%m-%d}; the active key is {expected}"
            )
        for r in blob_keys:
            if r.retired_at is not None and r.key_id not in files.retired_ids:
                problems.append(
                    f"{retired_dir(files.blob_path)}/{r.key_id}.key: retired message key "
                    f"{r.key_id} is missing; the messages it sealed cannot be read: {restore}"
                )
    elif files.blob_id is not None:
        steps["register_blob"] = True
        steps["check_sample"] = has_blobs
    elif has_blobs:
        problems.append(
            f"{files.blob_path}: the message key file is missing, and the store already "
            f"holds messages sealed with a key: {restore}"
        )
    elif may_create:
        steps["create_blob"] = steps["register_blob"] = True
    else:
        problems.append(f"{files.blob_path}: no message key yet (new store): {INIT_HINT}")

    if audit_keys:
        known_audit = {r.key_id: r for r in audit_keys}
        expected = ", ".join(f"{r.key_id} (registered {_when(r)})" for r in audit_keys)
        if files.audit_id is None:
            problems.append(
                f"{files.audit_path}: the audit key file is missing. This store's audit "
                f"chain is keyed with key {expected}; without it `audit verify` cannot "
                f"prove the trail intact and nothing can be audited: {restore}"
            )
        elif files.audit_id not in known_audit:
            problems.append(
                f"{files.audit_path}: wrong audit key: the file holds key {files.audit_id}, "
                f"but this store's audit chain is keyed with key {expected}"
            )
    elif files.audit_id is not None:
        steps["register_audit"] = True
    elif may_create:
        # Also for a store from before audit keys: nothing depends on this key yet.
        steps["create_audit"] = steps["register_audit"] = True
    else:
        problems.append(f"{files.audit_path}: no audit key yet: {INIT_HINT}")

    if problems:
        raise KeyRefused(problems)
    return KeyPlan(**steps)


# --- the edge: files and the store_keys table -----------------------------------------


@dataclass(frozen=True, slots=True)
class OpenedKeys:
    """What `settle` found or made: the key ring, the audit key, what was done, and the
    audit events that say so (recorded by the store once it runs)."""

    ring: KeyRing
    audit_key: bytes
    created: tuple[KeyKind, ...]
    registered: tuple[KeyKind, ...]
    events: tuple[AuditEvent, ...]


def read_files(storage: StorageConfig) -> tuple[KeyFiles, bytes | None, bytes | None, KeyRing]:
    """Read every key file (raises KeyFileError for a file that exists but is unusable)."""
    blob = read_key_file(storage.key_file)
    audit = read_key_file(storage.audit_key_path)
    retired = read_retired_keys(storage.key_file)
    files = KeyFiles(
        blob_path=storage.key_file,
        blob_id=key_id(blob) if blob is not None else None,
        audit_path=storage.audit_key_path,
        audit_id=key_id(audit) if audit is not None else None,
        retired_ids=frozenset(retired),
    )
    ring = KeyRing(blob or b"", retired)
    return files, blob, audit, ring


async def registered_keys(conn: AsyncConnection) -> list[RegisteredKey]:
    rows = (await conn.execute(select(t.store_keys).order_by(t.store_keys.c.created_at))).all()
    return [
        RegisteredKey(KeyKind(r.kind), r.key_id, _aware(r.created_at), _aware_or_none(r.retired_at))
        for r in rows
    ]


async def settle(
    conn: AsyncConnection,
    storage: StorageConfig,
    *,
    may_create: bool,
    now: dt.datetime,
) -> OpenedKeys:
    """Apply `plan` in the open transaction `conn` (which the caller serialises)."""
    files, blob, audit_key, ring = read_files(storage)
    registered = await registered_keys(conn)
    sample = (await conn.execute(select(t.blobs.c.id, t.blobs.c.data).limit(1))).one_or_none()
    decision = plan(files, registered, has_blobs=sample is not None, may_create=may_create)
    audited = await conn.scalar(select(t.audit_head.c.seq))
    in_use = sample is not None or bool(audited)
    created: list[KeyKind] = []
    done: list[KeyKind] = []
    events: list[AuditEvent] = []
    if decision.create_blob:
        blob = create_key_file(storage.key_file)
        created.append(KeyKind.BLOB)
    if decision.create_audit:
        audit_key = create_key_file(storage.audit_key_path)
        created.append(KeyKind.AUDIT)
    assert blob is not None and audit_key is not None
    first_blob = next((r.key_id for r in registered if r.kind is KeyKind.BLOB), key_id(blob))
    ring = KeyRing(blob, ring.others, legacy_id=first_blob)
    if decision.check_sample:
        assert sample is not None
        try:
            BlobCipher(ring).open(sample.id, bytes(sample.data))
        except StoreError:
            raise KeyRefused(
                [
                    f"{storage.key_file}: key {key_id(blob)} does not open the messages "
                    f"already in the store (blob {sample.id}): wrong key file; put back "
                    "the key this store was started with"
                ]
            ) from None
    for kind, key, path, wanted in (
        (KeyKind.BLOB, blob, storage.key_file, decision.register_blob),
        (KeyKind.AUDIT, audit_key, storage.audit_key_path, decision.register_audit),
    ):
        if not wanted:
            continue
        await conn.execute(
            insert(t.store_keys).values(
                key_id=key_id(key),
                kind=kind.value,
                fingerprint=key_fingerprint(key),
                created_at=now,
            )
        )
        done.append(kind)
        fields: dict[str, Any] = {"key_file": str(path), "key_id": key_id(key), "kind": kind.value}
        if kind in created:
            events.append(KeyCreated(**fields))
        elif in_use:
            # Keys made before the database (provisioning) are part of a new store's
            # creation; a store already in use taking a key is an event of its own.
            events.append(KeyRegistered(**fields))
    if KeyKind.AUDIT in done:
        # The chain is keyed from the next row on (rows before predate the audit key).
        await conn.execute(
            update(t.audit_head)
            .where(t.audit_head.c.id == 1, t.audit_head.c.keyed_from.is_(None))
            .values(keyed_from=t.audit_head.c.seq + 1)
        )
    return OpenedKeys(ring, audit_key, tuple(created), tuple(done), tuple(events))


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _aware_or_none(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else _aware(value)
