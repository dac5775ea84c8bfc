"""`mss-relay backup DIR`, `mss-relay restore DIR`, `mss-relay key rotate`.

backup   a consistent snapshot while the daemon runs, with the key files and the audit
         anchors (`relay.store.backup`); audited.
restore  onto an empty data directory (and an empty schema on PostgreSQL) only; then
         opens the store with the restored keys and verifies the audit chain.
key rotate
         a new message key seals at once; the blobs the old key sealed are re-encrypted
         (by the running daemon and by this command, which shows the progress); the old
         key stays, read-only, until none is left (`relay.store.rotation`).

Exit status: 0 done; 1 audit verification failed after a restore; 2 refused (bad
config, non-empty target, damaged backup, rotation already running).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["register", "register_key"]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2


def _config(path: str) -> Any:
    from relay.config import ConfigError, load

    try:
        return load(Path(path))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def cmd_backup(args: argparse.Namespace) -> int:
    from relay.audit.events import StoreBackedUp
    from relay.errors import StoreError
    from relay.store.backup import PG_FILE, backup, pg_dump_command
    from relay.store.store import Store

    config = _config(args.config)
    directory = Path(args.dir).absolute()

    async def run() -> int:
        try:
            store = await Store.open(config.storage)
        except StoreError as exc:
            print(f"mss-relay: cannot open the store: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        try:
            manifest = await backup(config.storage, directory, now=store.clock())
            await store.record(
                StoreBackedUp(
                    directory=str(directory),
                    engine=manifest.engine,
                    audit_seq=manifest.audit_seq,
                    operator=_operator(),
                )
            )
        except StoreError as exc:
            print(f"mss-relay: backup failed: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        finally:
            await store.close()
        print(f"backup written to {directory}")
        print(f"  engine {manifest.engine}, audit rows {manifest.audit_seq}")
        print(f"  message key {manifest.blob_key_id}, {len(manifest.files)} files")
        if manifest.engine == "postgresql":
            cmd = " ".join(pg_dump_command(config.storage, Path(PG_FILE)))
            print(f"  database: {cmd} (on an exported snapshot)")
        print("It holds the keys: keep it as safe as the key files themselves.")
        return EXIT_OK

    return asyncio.run(run())


def cmd_restore(args: argparse.Namespace) -> int:
    from relay.audit.events import StoreRestored
    from relay.errors import StoreError
    from relay.store.backup import restore_files
    from relay.store.store import Store

    config = _config(args.config)
    directory = Path(args.dir).absolute()

    async def run() -> int:
        try:
            manifest = await restore_files(config.storage, config.server.data_dir, directory)
        except StoreError as exc:
            print(f"mss-relay: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        try:
            store = await Store.open(config.storage)
        except StoreError as exc:
            print(f"mss-relay: restored, but the store does not open: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        try:
            result = await store.verify_audit()
            print(f"restored from {directory} (backup of {manifest.created_at})")
            print(f"audit verify: {result}")
            if not result.ok:
                return EXIT_CHECK_FAILED
            await store.record(
                StoreRestored(
                    directory=str(directory),
                    backed_up_at=manifest.created_at,
                    audit_seq=manifest.audit_seq,
                    operator=_operator(),
                )
            )
        finally:
            await store.close()
        return EXIT_OK

    return asyncio.run(run())


def _bar(done: int, total: int, width: int = 30) -> str:
    share = 1.0 if total <= 0 else min(done / total, 1.0)
    filled = int(share * width)
    return f"[{'#' * filled}{'-' * (width - filled)}] {share:4.0%} {done}/{total} blobs"


def cmd_key_rotate(args: argparse.Namespace) -> int:
    from relay.errors import StoreError
    from relay.store.rotation import Reencryptor, RotationError, rotate, rotation_status
    from relay.store.store import Store

    config = _config(args.config)

    async def run() -> int:
        try:
            store = await Store.open(config.storage)
        except StoreError as exc:
            print(f"mss-relay: cannot open the store: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        try:
            if not args.wait_only:
                try:
                    event = await rotate(store, config.storage, operator=_operator())
                except RotationError as exc:
                    print(f"mss-relay: {exc}", file=sys.stderr)
                    return EXIT_BAD_INPUT
                print(
                    f"message key rotated: {event.old_key_id} -> {event.new_key_id}; new "
                    f"messages are sealed with {event.new_key_id} (a running daemon takes "
                    f"it within {config.limits.key_poll_seconds} s)"
                )
                total = event.blobs
            else:
                total = (await rotation_status(store)).remaining
            if args.no_wait:
                print(
                    "re-encryption continues in the daemon (metric "
                    "mssrelay_key_reencrypt_remaining_blobs)"
                )
                return EXIT_OK
            worker = Reencryptor(store, config.storage, lambda: config.limits, by="cli")
            tty = sys.stderr.isatty()
            shown = -1.0
            while True:
                await worker.run_pass()
                status = await rotation_status(store)
                done = max(total - status.remaining, 0)
                if tty:
                    print("\r" + _bar(done, total), end="", file=sys.stderr, flush=True)
                elif time.monotonic() - shown > 5:
                    print(_bar(done, total), file=sys.stderr, flush=True)
                    shown = time.monotonic()
                if not status.retired:
                    break  # finished (here or by the daemon)
                if not status.remaining:
                    finished = await worker.finish_if_done()
                    if finished is not None:
                        break
                    await asyncio.sleep(1)  # the grace period for other nodes
            if tty:
                print(file=sys.stderr)
            print(
                f"re-encryption done: every blob is sealed with {store.cipher.key_id}; "
                "the old key file is removed"
            )
            return EXIT_OK
        finally:
            await store.close()

    return asyncio.run(run())


def register(subparsers: Any) -> None:
    """Add `backup` and `restore` to the `mss-relay` parser."""
    s = subparsers.add_parser(
        "backup", help="write a consistent snapshot with the key files and audit anchors"
    )
    s.add_argument("--config", "-c", default="/etc/mss-relay/relay.toml")
    s.add_argument("dir", help="a new (or empty) folder")
    s.set_defaults(func=cmd_backup)
    s = subparsers.add_parser(
        "restore", help="restore a backup onto an empty data directory, then verify the audit"
    )
    s.add_argument("--config", "-c", default="/etc/mss-relay/relay.toml")
    s.add_argument("dir", help="a folder written by `mss-relay backup`")
    s.set_defaults(func=cmd_restore)


def register_key(key_subparsers: Any) -> None:
    """Add `key rotate` under `mss-relay key`."""
    s = key_subparsers.add_parser(
        "rotate", help="new message key now; re-encrypt the old blobs with a progress bar"
    )
    s.add_argument("--config", "-c", default="/etc/mss-relay/relay.toml")
    s.add_argument(
        "--no-wait", action="store_true", help="leave the re-encryption to the running daemon"
    )
    s.add_argument(
        "--wait",
        dest="wait_only",
        action="store_true",
        help="no new key: follow (and help) a rotation under way until it ends",
    )
    s.set_defaults(func=cmd_key_rotate)
