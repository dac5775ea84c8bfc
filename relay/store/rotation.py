"""Message key rotation: a new key seals at once, old blobs are re-encrypted in the
background, the old key is kept read-only until none is left (`mss-relay key rotate`).

Builds on the key ring of `relay.store.crypto` / `relay.store.keys`: every sealed blob
names its key (v2 header: version byte and key id), the active key is
``storage.key_file``, retired keys are read from ``<key_file>.retired/<key id>.key``,
and ``store_keys`` records each key's fingerprint and when it was retired.

Rotation, step by step (each step durable before the next; `rotate` resumes any
interrupted one):

1. the new key is written to ``<key_file>.new`` (0600, fsync);
2. the old key is copied to the retired folder (it keeps opening what it sealed);
3. one transaction registers the new key as active, marks the old one retired, and
   audits `KeyRotated`;
4. ``<key_file>.new`` replaces ``<key_file>`` (atomic rename, fsync of the folder).

A cut before 3 leaves ``.new`` unregistered: the next `rotate` takes it as its new
key. A cut between 3 and 4: the next `Store.open` (any command, or the daemon) does
step 4 first (`finish_interrupted_switch`).

Running daemons compare the active key id in ``store_keys`` with their own every
``limits.key_poll_seconds``; on a change they re-read the key files and seal with the
new key from then on (`KeyReloaded`). Re-encryption (`Reencryptor`) then walks the
blobs whose header is not the active key's, in batches of
``limits.key_reencrypt_batch_blobs``: decrypt, seal with the active key, and write
back only if the row still has the header it was read with (compare-and-set, so the
CLI and several nodes may work at once and a crash loses nothing: a batch is one
transaction, and the walk starts again from what is left). When no blob is left and
the rotation is older than ``limits.key_switch_grace_seconds`` (time for every node to
have taken the new key), the retired keys are unregistered in one transaction
(`KeyReencrypted`) and their files removed.

Not done: distributing the new key file to other nodes. With several nodes on one
PostgreSQL, every node must see the same key files (e.g. one read-only mount).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from sqlalchemy import LargeBinary, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from relay.audit.events import KeyReencrypted, KeyReloaded, KeyRotated
from relay.config.model import Limits, StorageConfig
from relay.errors import StoreError
from relay.store import schema as t
from relay.store.crypto import (
    KEY_ID_BYTES,
    BlobCipher,
    create_key_file,
    key_fingerprint,
    key_id,
    read_key_file,
    retired_dir,
)
from relay.store.store import Store, TxContext

__all__ = ["KeyRotator", "Reencryptor", "RotationError", "rotate", "rotation_status"]

log = structlog.get_logger("relay.store.rotation")

_V2 = b"\x02"
_HEADER = 1 + KEY_ID_BYTES


class RotationError(StoreError):
    """A rotation cannot start or continue; the message says why and what to do."""


def _header(kid: str) -> bytes:
    return _V2 + bytes.fromhex(kid)


def _prefix() -> ColumnElement[bytes]:
    # The blob's header (version byte and key id); SQLite and PostgreSQL both have
    # substr() on binary values.
    prefix: ColumnElement[bytes] = func.substr(t.blobs.c.data, 1, _HEADER)
    return prefix


def _sealed_with(header: bytes, name: str) -> ColumnElement[bool]:
    return _prefix() == bindparam(name, header, type_=LargeBinary)


def _not_sealed_with(header: bytes) -> ColumnElement[bool]:
    return _prefix() != bindparam("active", header, type_=LargeBinary)


def new_key_path(storage: StorageConfig) -> Path:
    return storage.key_file.with_name(storage.key_file.name + ".new")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_key(path: Path, key: bytes) -> None:
    """Write `key` to a new file (0600, fsync), or check that `path` already holds it."""
    existing = read_key_file(path)
    if existing is not None:
        if existing != key:
            raise RotationError(f"{path}: holds another key than {key_id(key)}; not overwritten")
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


# --- what the database says ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RotationStatus:
    active_id: str | None  # the registered active message key
    retired: tuple[tuple[str, dt.datetime], ...]  # registered retired keys, when retired
    remaining: int  # blobs not sealed with the active key (counted during a rotation only)


async def rotation_status(store: Store) -> RotationStatus:
    async def read(conn: AsyncConnection) -> RotationStatus:
        rows = (
            await conn.execute(
                select(t.store_keys.c.key_id, t.store_keys.c.retired_at).where(
                    t.store_keys.c.kind == "blob"
                )
            )
        ).all()
        active = [r.key_id for r in rows if r.retired_at is None]
        retired = tuple(
            (str(r.key_id), _aware(r.retired_at)) for r in rows if r.retired_at is not None
        )
        active_id = active[0] if active else None
        remaining = 0
        # Only during a rotation: the daemon asks every few seconds, and counting is a
        # walk over every blob.
        if active_id is not None and retired:
            remaining = int(
                await conn.scalar(
                    select(func.count())
                    .select_from(t.blobs)
                    .where(_not_sealed_with(_header(active_id)))
                )
                or 0
            )
        return RotationStatus(active_id, retired, remaining)

    return await store.read(read)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


# --- the switch (mss-relay key rotate) ------------------------------------------------


async def finish_interrupted_switch(engine: AsyncEngine, storage: StorageConfig) -> bool:
    """Step 4 of a rotation cut after its transaction: rename ``<key_file>.new`` once
    the database says it is the active key. `Store.open` calls this before checking
    the key files, so a daemon restarted after such a cut starts with the right key."""
    path = new_key_path(storage)
    new = read_key_file(path)
    if new is None:
        return False
    async with engine.connect() as conn:
        active = await conn.scalar(
            select(t.store_keys.c.key_id).where(
                t.store_keys.c.kind == "blob", t.store_keys.c.retired_at.is_(None)
            )
        )
    if active != key_id(new):
        return False  # not registered yet: `rotate` takes it as its new key
    os.replace(path, storage.key_file)
    _fsync_dir(storage.key_file.parent)
    log.warning("store.key_switch_finished", key_id=active, key_file=str(storage.key_file))
    return True


async def rotate(store: Store, storage: StorageConfig, *, operator: str) -> KeyRotated:
    """Steps 1 to 4 (module docstring). Refuses while an earlier rotation is still
    re-encrypting: two retired generations would double the work and the risk."""
    status = await rotation_status(store)
    if status.retired:
        ids = ", ".join(k for k, _ in status.retired)
        raise RotationError(
            f"a rotation is still under way: {status.remaining} blob(s) to re-encrypt away "
            f"from retired key {ids}; wait for it to end (`mss-relay key rotate --wait`)"
        )
    old = store.cipher.ring.active
    old_id = key_id(old)
    if status.active_id != old_id:
        raise RotationError(
            f"{storage.key_file}: holds key {old_id} but the store's active key is "
            f"{status.active_id}; fix the key files first"
        )
    path = new_key_path(storage)
    new = read_key_file(path)  # a previous attempt stopped before its transaction
    if new is None:
        new = create_key_file(path)
    new_id = key_id(new)
    _write_key(retired_dir(storage.key_file) / f"{old_id}.key", old)

    async def count(conn: AsyncConnection) -> int:
        return int(await conn.scalar(select(func.count()).select_from(t.blobs)) or 0)

    # every blob is to be re-encrypted: the new key sealed none yet
    event = KeyRotated(
        old_key_id=old_id, new_key_id=new_id, blobs=await store.read(count), operator=operator
    )

    async def unit(conn: AsyncConnection, ctx: TxContext) -> None:
        now = store.clock()
        await conn.execute(
            insert(t.store_keys).values(
                key_id=new_id, kind="blob", fingerprint=key_fingerprint(new), created_at=now
            )
        )
        await conn.execute(
            update(t.store_keys)
            .where(t.store_keys.c.key_id == old_id, t.store_keys.c.kind == "blob")
            .values(retired_at=now)
        )
        ctx.audit(event)

    await store.transact(unit)
    os.replace(path, storage.key_file)
    _fsync_dir(storage.key_file.parent)
    store.reload_keys(storage)
    return event


# --- re-encryption --------------------------------------------------------------------


class Reencryptor:
    """Walks the blobs not sealed with the active key and re-seals them (CAS writes)."""

    def __init__(
        self,
        store: Store,
        storage: StorageConfig,
        limits: Callable[[], Limits],
        *,
        by: str,
    ) -> None:
        self.store = store
        self.storage = storage
        self.limits = limits
        self.by = by
        self.done = 0  # blobs this process re-encrypted

    async def _batch(self, after: str, active_id: str, size: int) -> list[tuple[str, bytes, bytes]]:
        async def read(conn: AsyncConnection) -> list[tuple[str, bytes, bytes]]:
            rows = (
                await conn.execute(
                    select(t.blobs.c.id, t.blobs.c.data, t.blobs.c.meta)
                    .where(
                        t.blobs.c.id > after,
                        _not_sealed_with(_header(active_id)),
                    )
                    .order_by(t.blobs.c.id)
                    .limit(size)
                )
            ).all()
            return [(str(r.id), bytes(r.data), bytes(r.meta)) for r in rows]

        return await self.store.read(read)

    async def run_pass(self) -> int:
        """One walk over the blobs; returns how many this pass re-sealed."""
        cipher = self.store.cipher
        active_id = cipher.key_id
        after = ""
        done = 0
        while True:
            limits = self.limits()
            batch = await self._batch(after, active_id, limits.key_reencrypt_batch_blobs)
            if not batch:
                return done
            after = batch[-1][0]
            resealed = await asyncio.to_thread(_reseal, cipher, batch)

            async def unit(
                conn: AsyncConnection, _ctx: TxContext, resealed: list[_Resealed] = resealed
            ) -> int:
                changed = 0
                for r in resealed:
                    res = await conn.execute(
                        update(t.blobs)
                        .where(
                            t.blobs.c.id == r.blob_id,
                            _sealed_with(r.old_header, "old"),
                        )
                        .values(data=r.data, meta=r.meta)
                    )
                    changed += int(res.rowcount or 0)
                return changed

            changed = await self.store.transact(unit)
            done += changed
            self.done += changed
            self.store.metrics.reencrypted.inc(changed)
            await asyncio.sleep(limits.key_reencrypt_pause_ms / 1000)

    async def finish_if_done(self) -> KeyReencrypted | None:
        """Unregister the retired keys once no blob needs them and the grace passed."""
        status = await rotation_status(self.store)
        self.store.metrics.reencrypt_remaining.set(status.remaining)
        if not status.retired or status.remaining or status.active_id is None:
            return None
        grace = dt.timedelta(seconds=self.limits().key_switch_grace_seconds)
        now = self.store.clock()
        if any(now - when < grace for _, when in status.retired):
            return None
        retired_ids = [k for k, _ in status.retired]
        event = KeyReencrypted(
            old_key_id=",".join(retired_ids),
            new_key_id=status.active_id,
            blobs=self.done,
            by=self.by,
        )
        prefix_active = _header(status.active_id)

        async def unit(conn: AsyncConnection, ctx: TxContext) -> bool:
            left = await conn.scalar(
                select(func.count()).select_from(t.blobs).where(_not_sealed_with(prefix_active))
            )
            if left:
                return False  # a blob sealed with an old key arrived meanwhile
            res = await conn.execute(
                delete(t.store_keys).where(
                    t.store_keys.c.kind == "blob", t.store_keys.c.key_id.in_(retired_ids)
                )
            )
            if not res.rowcount:
                return False  # another process finished first
            ctx.audit(event)
            return True

        if not await self.store.transact(unit):
            return None
        for kid in retired_ids:
            with contextlib.suppress(FileNotFoundError):
                (retired_dir(self.storage.key_file) / f"{kid}.key").unlink()
        self.store.reload_keys(self.storage)
        return event


@dataclass(frozen=True, slots=True)
class _Resealed:
    blob_id: str
    old_header: bytes
    data: bytes
    meta: bytes


def _reseal(cipher: BlobCipher, batch: list[tuple[str, bytes, bytes]]) -> list[_Resealed]:
    out: list[_Resealed] = []
    for blob_id, data, meta in batch:
        out.append(
            _Resealed(
                blob_id=blob_id,
                old_header=data[:_HEADER],
                data=cipher.seal(blob_id, cipher.open(blob_id, data)),
                meta=cipher.seal(blob_id + ":meta", cipher.open(blob_id + ":meta", meta)),
            )
        )
    return out


# --- in the daemon --------------------------------------------------------------------


class KeyRotator:
    """The daemon's side: take a new key at once, re-encrypt, finish."""

    def __init__(self, store: Store, storage: StorageConfig, limits: Callable[[], Limits]) -> None:
        self.store = store
        self.storage = storage
        self.limits = limits
        self.reencryptor = Reencryptor(store, storage, limits, by=f"node {store.node_id}")
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="key-rotator")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def step(self) -> None:
        """One look: reload a new key, re-encrypt what is left, finish if done."""
        status = await rotation_status(self.store)
        if status.active_id is not None and status.active_id != self.store.cipher.key_id:
            self.store.reload_keys(self.storage)
            if self.store.cipher.key_id == status.active_id:
                log.info("store.key_reloaded", key_id=status.active_id)
                await self.store.record(
                    KeyReloaded(key_id=status.active_id, node=self.store.node_id)
                )
        self.store.metrics.reencrypt_remaining.set(status.remaining)
        if status.retired and status.active_id == self.store.cipher.key_id:
            if status.remaining:
                await self.reencryptor.run_pass()
            await self.reencryptor.finish_if_done()

    async def _loop(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("store.key_rotation_failed")
            await asyncio.sleep(self.limits().key_poll_seconds)
