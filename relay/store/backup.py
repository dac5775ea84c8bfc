"""Backup and restore: a consistent snapshot of the store, with what lives outside it.

A backup folder holds:

- the database: SQLite through its online backup API (``relay.db``, a consistent copy
  taken while the daemon writes: the copy runs in one read transaction); PostgreSQL
  through ``pg_dump --format=custom`` (``relay.pgdump``) of the store's schema, run on
  a snapshot exported from a transaction that also reads the audit head, so the
  manifest's head is the dump's. The documented command is the plain
  ``pg_dump --format=custom --schema=SCHEMA --file=relay.pgdump DBNAME``; mss-relay
  adds the rest;
- the key files: the message key, the retired message keys, the audit key. Without
  them the dump is unreadable ciphertext and an unprovable audit trail. They are
  copied before and after the snapshot, so a rotation running meanwhile cannot leave
  the snapshot with a key the folder lacks;
- the audit anchors file (``storage.audit_anchor_file``), copied before the snapshot:
  every anchor in it is then at or below the snapshot's head, so `audit verify` after
  a restore passes;
- ``mss-relay-backup.json``: what was backed up, from which engine, the audit head of
  the snapshot, the key ids, and the SHA-256 of every file (restore checks them).

The folder is created 0700 and the files 0600: it holds the keys, treat it like them.

Restore goes onto an empty place only: no database file (SQLite) or an empty schema
(PostgreSQL), no key file, no anchors file; otherwise it refuses and says which is in
the way. After copying it opens the store (the key fingerprints must match) and runs
the audit verification.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from relay.config.model import StorageConfig
from relay.errors import StoreError
from relay.store.crypto import key_id, read_key_file, read_retired_keys, retired_dir

__all__ = [
    "MANIFEST",
    "BackupError",
    "Manifest",
    "backup",
    "pg_dump_command",
    "restore_files",
]

MANIFEST = "mss-relay-backup.json"
FORMAT = 1
SQLITE_FILE = "relay.db"
PG_FILE = "relay.pgdump"
KEYS = "keys"


class BackupError(StoreError):
    """A backup or restore cannot be done; the message says why."""


@dataclass(frozen=True, slots=True)
class Manifest:
    format: int
    created_at: str
    engine: str  # sqlite | postgresql
    schema: str | None
    audit_seq: int
    audit_hash: str
    blob_key_id: str
    retired_key_ids: tuple[str, ...]
    files: dict[str, str]  # relative path -> sha256

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise BackupError(f"unknown backup format {data.get('format')!r} (expected {FORMAT})")
        data["retired_key_ids"] = tuple(data["retired_key_ids"])
        return cls(**data)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_private(src: Path, dst: Path) -> None:
    """Copy `src` to the new file `dst` (0600, fsync); never overwrite."""
    dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out, src.open("rb") as f:
        shutil.copyfileobj(f, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())


def anchor_path(storage: StorageConfig) -> Path:
    """The audit anchors file (relay.audit.anchors)."""
    return storage.audit_anchor_path


def _key_files(storage: StorageConfig) -> list[tuple[str, Path]]:
    """(name in the backup, path) of every key file there is now."""
    out = [(f"{KEYS}/message.key", storage.key_file)]
    out.append((f"{KEYS}/audit.key", storage.audit_key_path))
    folder = retired_dir(storage.key_file)
    for kid in sorted(read_retired_keys(storage.key_file)):
        out.append((f"{KEYS}/retired/{kid}.key", folder / f"{kid}.key"))
    return [(name, path) for name, path in out if path.exists()]


def sqlite_path(storage: StorageConfig) -> Path:
    database = make_url(storage.url).database
    if not database:
        raise BackupError(f"{storage.url}: no database file")
    return Path(database)


def pg_env(storage: StorageConfig) -> dict[str, str]:
    """libpq environment for pg_dump / pg_restore (the password never on a command line)."""
    url = make_url(storage.url)
    env = dict(os.environ)
    for var, value in (
        ("PGHOST", url.host),
        ("PGPORT", str(url.port) if url.port else None),
        ("PGUSER", url.username),
        ("PGPASSWORD", url.password),
        ("PGDATABASE", url.database),
    ):
        if value:
            env[var] = str(value)
    return env


def pg_dump_command(storage: StorageConfig, output: Path, snapshot: str | None = None) -> list[str]:
    cmd = ["pg_dump", "--format=custom", "--no-owner", f"--file={output}"]
    cmd.append(f"--schema={storage.schema or 'public'}")
    if snapshot:
        cmd.append(f"--snapshot={snapshot}")
    return cmd


def _sqlite_snapshot(src: Path, dst: Path) -> tuple[int, str]:
    """SQLite online backup (all pages in one step: one read transaction) and the audit
    head of the copy."""
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")  # a self-contained file, no -wal
        row = target.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
    finally:
        target.close()
        source.close()
    _fsync(dst)
    if row is None:
        raise BackupError(f"{src}: no audit head: not an mss-relay database")
    return int(row[0]), str(row[1])


async def _pg_snapshot(storage: StorageConfig, dst: Path) -> tuple[int, str]:
    import asyncpg

    dsn = storage.url.replace("postgresql+asyncpg://", "postgresql://", 1)
    settings = {"search_path": storage.schema} if storage.schema else None
    conn = await asyncpg.connect(dsn, server_settings=settings)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            row = await conn.fetchrow("SELECT seq, hash FROM audit_head WHERE id = 1")
            if row is None:
                raise BackupError("no audit head: not an mss-relay database")
            cmd = pg_dump_command(storage, dst, snapshot)
            done = await asyncio.to_thread(
                subprocess.run, cmd, env=pg_env(storage), capture_output=True, text=True
            )
            if done.returncode != 0:
                raise BackupError(f"pg_dump failed: {done.stderr.strip()[:500]}")
    finally:
        await conn.close()
    await asyncio.to_thread(_private, dst)
    return int(row["seq"]), str(row["hash"])


def _private(path: Path) -> None:
    path.chmod(0o600)
    _fsync(path)


def _start(storage: StorageConfig, directory: Path) -> dict[str, Path]:
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise BackupError(f"{directory}: exists and is not empty; back up to a new folder")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    copied: dict[str, Path] = {}
    _copy_keys(storage, directory, copied)
    anchors = anchor_path(storage)
    if anchors.exists():
        _copy_private(anchors, directory / "audit-anchors.jsonl")
    return copied


def _copy_keys(storage: StorageConfig, directory: Path, copied: dict[str, Path]) -> None:
    for name, path in _key_files(storage):
        if name not in copied:
            _copy_private(path, directory / name)
            copied[name] = path


def _finish(
    storage: StorageConfig,
    directory: Path,
    copied: dict[str, Path],
    *,
    engine: str,
    seq: int,
    head: str,
    now: dt.datetime,
) -> Manifest:
    _copy_keys(storage, directory, copied)  # a key made during the snapshot (rotation)
    blob = read_key_file(directory / f"{KEYS}/message.key")
    if blob is None:
        raise BackupError(f"{storage.key_file}: the message key file is missing")
    files = {
        str(p.relative_to(directory)): _sha256(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = Manifest(
        format=FORMAT,
        created_at=now.astimezone(dt.UTC).isoformat(timespec="seconds"),
        engine=engine,
        schema=storage.schema,
        audit_seq=seq,
        audit_hash=head,
        blob_key_id=key_id(blob),
        retired_key_ids=tuple(
            sorted(n.rsplit("/", 1)[1].removesuffix(".key") for n in files if "/retired/" in n)
        ),
        files=files,
    )
    path = directory / MANIFEST
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(manifest.to_json())
        out.flush()
        os.fsync(out.fileno())
    _fsync(directory)
    return manifest


async def backup(storage: StorageConfig, directory: Path, *, now: dt.datetime) -> Manifest:
    """Write a backup of the store to `directory`, which must not exist or be empty."""
    try:
        return await _backup(storage, directory, now=now)
    except OSError as exc:  # a folder not writable, a disk full, pg_dump not installed
        raise BackupError(_os_problem(exc)) from None


def _os_problem(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError) and exc.filename in ("pg_dump", "pg_restore"):
        return f"{exc.filename} not found: install PostgreSQL's client tools (postgresql-client)"
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


async def _backup(storage: StorageConfig, directory: Path, *, now: dt.datetime) -> Manifest:
    copied = await asyncio.to_thread(_start, storage, directory)
    engine = "sqlite" if storage.url.startswith("sqlite") else "postgresql"
    if engine == "sqlite":
        seq, head = await asyncio.to_thread(
            _sqlite_snapshot, sqlite_path(storage), directory / SQLITE_FILE
        )
    else:
        seq, head = await _pg_snapshot(storage, directory / PG_FILE)
    return await asyncio.to_thread(
        _finish, storage, directory, copied, engine=engine, seq=seq, head=head, now=now
    )


# --- restore ----------------------------------------------------------------------------


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST
    try:
        manifest = Manifest.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"{directory}: no {MANIFEST}: not an mss-relay backup") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise BackupError(f"{path}: unreadable manifest ({exc})") from None
    for name, digest in manifest.files.items():
        file = directory / name
        if not file.is_file():
            raise BackupError(f"{file}: listed in the manifest but missing")
        if _sha256(file) != digest:
            raise BackupError(f"{file}: damaged (its SHA-256 differs from the manifest's)")
    return manifest


def _in_the_way(paths: Iterable[Path]) -> list[str]:
    return [str(p) for p in paths if p.exists()]


def check_target(storage: StorageConfig, data_dir: Path, manifest: Manifest) -> None:
    """Refuse, naming what is in the way, unless the target is empty."""
    engine = "sqlite" if storage.url.startswith("sqlite") else "postgresql"
    if engine != manifest.engine:
        raise BackupError(
            f"the backup is of a {manifest.engine} store but the config's storage.url is "
            f"{engine}; restore onto the same engine"
        )
    problems: list[str] = []
    if data_dir.exists():
        entries = sorted(p.name for p in data_dir.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
            problems.append(f"{data_dir}: the data directory is not empty ({shown})")
    targets = [
        storage.key_file,
        storage.audit_key_path,
        retired_dir(storage.key_file),
        anchor_path(storage),
    ]
    if engine == "sqlite":
        db = sqlite_path(storage)
        targets += [db, db.with_name(db.name + "-wal")]
    problems += [f"{p}: exists" for p in _in_the_way(targets)]
    if problems:
        raise BackupError(
            "restore refused: it only goes onto an empty place, so that nothing is "
            "overwritten:\n  " + "\n  ".join(problems)
        )


async def _pg_target_empty(storage: StorageConfig, manifest: Manifest) -> None:
    import asyncpg

    if storage.schema != manifest.schema:
        raise BackupError(
            f"the backup is of PostgreSQL schema {manifest.schema or 'public'} but the "
            f"config names {storage.schema or 'public'}; pg_restore keeps schema names: "
            "set storage.schema to the backup's"
        )
    dsn = storage.url.replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(dsn)
    try:
        schema = storage.schema or "public"
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 "
            "ORDER BY table_name LIMIT 6",
            schema,
        )
        if tables:
            names = ", ".join(r["table_name"] for r in tables[:5])
            raise BackupError(
                f"restore refused: PostgreSQL schema {schema} is not empty ({names}); "
                "restore into an empty schema"
            )
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    finally:
        await conn.close()


async def _pg_restore(storage: StorageConfig, dump: Path) -> None:
    env = pg_env(storage)
    listed = await asyncio.to_thread(
        subprocess.run, ["pg_restore", "--list", str(dump)], env=env, capture_output=True, text=True
    )
    if listed.returncode != 0:
        raise BackupError(f"pg_restore --list failed: {listed.stderr.strip()[:500]}")
    # The schema itself exists already (created empty above): leave its entry out.
    entries = "\n".join(line for line in listed.stdout.splitlines() if " SCHEMA - " not in line)
    list_file = dump.with_name(dump.name + ".list")
    with contextlib.suppress(FileNotFoundError):
        list_file.unlink()
    cmd = [
        "pg_restore",
        "--no-owner",
        "--exit-on-error",
        "--single-transaction",
        f"--dbname={env.get('PGDATABASE', '')}",
        f"--use-list={list_file}",
        str(dump),
    ]
    try:
        list_file.write_text(entries + "\n", encoding="utf-8")
        done = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            list_file.unlink()
    if done.returncode != 0:
        raise BackupError(f"pg_restore failed: {done.stderr.strip()[:500]}")


async def restore_files(storage: StorageConfig, data_dir: Path, directory: Path) -> Manifest:
    """Check the backup and the target, then put the database and the files in place."""
    try:
        return await _restore_files(storage, data_dir, directory)
    except OSError as exc:
        raise BackupError(_os_problem(exc)) from None


async def _restore_files(storage: StorageConfig, data_dir: Path, directory: Path) -> Manifest:
    manifest = await asyncio.to_thread(read_manifest, directory)
    await asyncio.to_thread(check_target, storage, data_dir, manifest)
    if manifest.engine == "postgresql":
        await _pg_target_empty(storage, manifest)
    await asyncio.to_thread(_place_files, storage, data_dir, directory, manifest)
    if manifest.engine == "postgresql":
        await _pg_restore(storage, directory / PG_FILE)
    return manifest


def _place_files(
    storage: StorageConfig, data_dir: Path, directory: Path, manifest: Manifest
) -> None:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _copy_private(directory / f"{KEYS}/message.key", storage.key_file)
    _copy_private(directory / f"{KEYS}/audit.key", storage.audit_key_path)
    for kid in manifest.retired_key_ids:
        _copy_private(
            directory / f"{KEYS}/retired/{kid}.key", retired_dir(storage.key_file) / f"{kid}.key"
        )
    if (directory / "audit-anchors.jsonl").exists():
        _copy_private(directory / "audit-anchors.jsonl", anchor_path(storage))
    if manifest.engine == "sqlite":
        _copy_private(directory / SQLITE_FILE, sqlite_path(storage))
