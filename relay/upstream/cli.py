"""`mss-relay upstream status [BOX]`: how each box hosted at an operator is mirrored;
`mss-relay upstream sync BOX`: a round now, through the daemon's control socket.

Read from the database (the daemon may run or not): the sync state, the last complete
comparison and how long ago, messages mirrored and downloaded, local changes waiting
to go up and those the operator refused, the last error.

Exit status: 0 shown, 1 no such hosted box, 2 bad input (config, store).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relay.errors import StoreError
from relay.store.downsync import mirrored_counts
from relay.store.mirror import MirrorStore, UpstreamBox
from relay.store.store import Store
from relay.store.upjournal import RefusedChange, ReplayStore

__all__ = ["register", "render_status"]

EXIT_OK = 0
EXIT_NOTHING = 1
EXIT_BAD_INPUT = 2
MAX_REFUSED_SHOWN = 20  # the most recent; all of them are in the audit trail


def _when(value: dt.datetime | None, now: dt.datetime) -> str:
    if value is None:
        return "never"
    ago = int((now - value).total_seconds())
    if ago < 120:
        lag = f"{ago} s ago"
    elif ago < 7200:
        lag = f"{ago // 60} min ago"
    else:
        lag = f"{ago // 3600} h ago"
    return f"{value.astimezone():%Y-%m-%d %H:%M:%S} ({lag})"


def render_status(
    boxes: Sequence[UpstreamBox],
    mirrored: dict[str, int],
    pending: dict[str, int],
    refused: dict[str, int],
    now: dt.datetime,
    refused_changes: dict[str, list[RefusedChange]] | None = None,
) -> str:
    """The status text; with `refused_changes`, each refused change under its box
    (the journal row, when, what, by whom, and the operator's answer)."""
    if not boxes:
        return "no box is hosted at an operator"
    blocks = []
    for b in boxes:
        lines = [
            f"{b.box}{'' if b.enabled else '  (no longer in the config)'}",
            f"  state             {b.state}",
            f"  last sync         {_when(b.last_sync_at, now)}",
            f"  messages mirrored {mirrored.get(b.box, 0)} (downloaded {b.downloaded})",
            f"  pending changes   {pending.get(b.box, 0)} (replayed {b.replayed})",
            f"  refused changes   {refused.get(b.box, 0)}",
        ]
        for c in (refused_changes or {}).get(b.box, [])[-MAX_REFUSED_SHOWN:]:
            what = f"{c.kind} {c.folder}" if c.folder else c.kind
            lines.append(
                f"    #{c.id} {c.created_at.astimezone():%Y-%m-%d %H:%M} {what}"
                f" by {c.person or 'the system'}: {c.answer or 'refused'}"
            )
        if b.last_error:
            lines.append(f"  last error        {_when(b.last_error_at, now)}: {b.last_error}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


async def _status(args: argparse.Namespace) -> int:
    from relay.config import ConfigError, load

    try:
        config = load(Path(args.config))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        store = await Store.open(config.storage)
    except StoreError as exc:
        print(f"mss-relay: cannot open the store: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        mirror = MirrorStore(store)
        boxes = await mirror.boxes()
        if args.box is not None:
            boxes = [b for b in boxes if b.box == args.box.lower()]
            if not boxes:
                print(f"{args.box} is not a box hosted at an operator", file=sys.stderr)
                return EXIT_NOTHING
        pending: dict[str, int] = {}
        refused: dict[str, int] = {}
        details: dict[str, list[RefusedChange]] = {}
        replay = ReplayStore(store)
        for b in boxes:
            pending[b.box] = await mirror.pending_count(b.box)
            details[b.box] = await replay.refused_changes(b.box)
            refused[b.box] = len(details[b.box])
        text = render_status(
            boxes,
            await mirrored_counts(store),
            pending,
            refused,
            dt.datetime.now(dt.UTC),
            refused_changes=details,
        )
        print(text)
        return EXIT_OK
    finally:
        await store.close()


def cmd_status(args: argparse.Namespace) -> int:
    return asyncio.run(_status(args))


def cmd_sync(args: argparse.Namespace) -> int:
    """Through the running daemon's control socket: its loop for BOX does a round now
    (local changes replayed, every folder compared) and the command waits for it."""
    from relay.control.cli import run
    from relay.control.protocol import Command, Request

    return run(args, Request(Command.UPSTREAM_SYNC, box=args.box), timeout=args.timeout)


def register(subparsers: Any) -> None:
    """Add `upstream` and its subcommands to the `mss-relay` parser."""
    upstream = subparsers.add_parser("upstream", help="boxes hosted at an MSSanté operator")
    sub = upstream.add_subparsers(dest="upstream_command", required=True)
    s = sub.add_parser("status", help="last sync, messages mirrored, pending changes, last error")
    s.add_argument("--config", "-c", default="/etc/mss-relay/relay.toml")
    s.add_argument("box", nargs="?", help="one box (default: every hosted box)")
    s.set_defaults(func=cmd_status)
    s = sub.add_parser("sync", help="sync BOX with its operator now (the daemon must run)")
    s.add_argument("--config", "-c", default="/etc/mss-relay/relay.toml", help="to find the socket")
    s.add_argument("--socket", help="the control socket (default: from the config)")
    s.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    s.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds to wait for the round (3600)"
    )
    s.add_argument("box", metavar="BOX", help="a box with a [mailboxes.upstream] table")
    s.set_defaults(func=cmd_sync)
