"""`mss-relay queue list | show ID | retry ID | bounce ID | delete ID`.

ID is a row number (the first column of `queue list`: one recipient) or a 16-hex-digit
queue id (every recipient of one message, as in "250 2.0.0 Ok: queued as ...").
Every action is written to the audit trail with the operator's OS user name. The
commands work on the database directly, while the daemon runs or not: a retry is
picked up by the daemon's next look at the queue (``queue_poll_seconds``), a bounce's
delivery status notification is sent by the daemon, a delete sends none.

Exit status: 0 done, 1 no row matched, 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from relay.audit.events import AuditEvent, QueueManualAction
from relay.errors import StoreError
from relay.store.queue import PENDING, QueueItem, QueueStore, parse_ident
from relay.store.store import Store

__all__ = ["register"]

EXIT_OK = 0
EXIT_NOTHING = 1
EXIT_BAD_INPUT = 2
OPERATOR_BOUNCE = "5.0.0 returned to the sender by the operator (mss-relay queue bounce)"


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _short(text: str | None, width: int) -> str:
    text = " ".join((text or "-").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_list(rows: Sequence[QueueItem]) -> str:
    """The `queue list` table: one line per recipient, next attempt in local time."""
    if not rows:
        return "queue empty"
    lines = [
        f"{'ID':>6}  {'QUEUE ID':16}  {'STATUS':9} {'TRIES':>5}  {'NEXT ATTEMPT':19}  "
        f"{'RECIPIENT':32}  LAST REPLY"
    ]
    for r in rows:
        next_at = (
            _when(r.next_attempt_at) if r.status in ("queued", "deferred") else "(in progress)"
        )
        if r.status in ("delivered", "bounced"):
            next_at = "(finishing)"
        lines.append(
            f"{r.id:>6}  {r.queue_id:16}  {r.status:9} {r.attempts:>5}  {next_at:19}  "
            f"{_short(r.recipient, 32):32}  {_short(r.last_reply, 60)}"
        )
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    lines.append(f"{len(rows)} recipient(s): {summary}")
    return "\n".join(lines)


def render_show(rows: Sequence[QueueItem]) -> str:
    """Every field of each row, one per line."""
    blocks = []
    for r in rows:
        fields: list[tuple[str, Any]] = [
            ("row", r.id),
            ("queue id", r.queue_id),
            ("status", r.status),
            ("sender", r.sender or "<> (delivery report)"),
            ("recipient", r.recipient),
            ("message-id", r.message_id or "-"),
            ("sent by", f"{r.person or '-'} as {r.box or '-'}"),
            ("queued at", _when(r.created_at)),
            ("attempts", r.attempts),
            ("last attempt", _when(r.last_attempt_at)),
            (
                "next attempt",
                _when(r.next_attempt_at) if r.status in ("queued", "deferred") else "-",
            ),
            ("last reply", r.last_reply or "-"),
            ("delay warned", "yes" if r.delay_warned else "no"),
        ]
        blocks.append("\n".join(f"{name:>13}: {value}" for name, value in fields))
    return "\n\n".join(blocks)


def _event(action: str, target: str) -> Callable[[Sequence[QueueItem]], AuditEvent]:
    def make(rows: Sequence[QueueItem]) -> AuditEvent:
        boxes = {r.box for r in rows if r.box}
        return QueueManualAction(
            box=boxes.pop() if len(boxes) == 1 else None,
            request=f"mss-relay queue {action} {target}",
            answer=f"{len(rows)} row(s)",
            action=action,
            target=target,
            operator=getpass.getuser(),
            rows=tuple(r.id for r in rows),
            recipients=tuple(r.recipient for r in rows),
        )

    return make


async def _with_queue(
    args: argparse.Namespace, action: Callable[[QueueStore], Awaitable[int]]
) -> int:
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
        return await action(QueueStore(store))
    finally:
        await store.close()


def _check_ident(ident: str) -> bool:
    try:
        parse_ident(ident)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return False
    return True


def cmd_list(args: argparse.Namespace) -> int:
    async def run(queue: QueueStore) -> int:
        print(render_list(await queue.pending(args.status)))
        return EXIT_OK

    return asyncio.run(_with_queue(args, run))


def cmd_show(args: argparse.Namespace) -> int:
    if not _check_ident(args.id):
        return EXIT_BAD_INPUT

    async def run(queue: QueueStore) -> int:
        rows = await queue.find(args.id)
        if not rows:
            print(f"no queue row matches {args.id}", file=sys.stderr)
            return EXIT_NOTHING
        print(render_show(rows))
        return EXIT_OK

    return asyncio.run(_with_queue(args, run))


def _action(name: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        if not _check_ident(args.id):
            return EXIT_BAD_INPUT

        async def run(queue: QueueStore) -> int:
            event = _event(name, args.id)
            now = dt.datetime.now(dt.UTC)
            if name == "retry":
                rows = await queue.retry(args.id, now, event)
                done = "will be tried at the daemon's next look at the queue"
            elif name == "bounce":
                rows = await queue.bounce(args.id, now, OPERATOR_BOUNCE, event)
                done = "bounced; the daemon sends the delivery report to the sender"
            else:
                rows = await queue.delete(args.id, event)
                done = "deleted (no delivery report)"
            if not rows:
                wanted = {"retry": "queued or deferred", "bounce": "/".join(PENDING)}
                which = wanted.get(name, "any")
                print(f"no {which} queue row matches {args.id}", file=sys.stderr)
                return EXIT_NOTHING
            for r in rows:
                print(f"{r.id:>6}  {r.queue_id}  {r.recipient}: {done}")
            return EXIT_OK

        return asyncio.run(_with_queue(args, run))

    return command


def register(subparsers: Any) -> None:
    """Add `queue` and its subcommands to the `mss-relay` parser."""
    queue = subparsers.add_parser("queue", help="inspect and act on the outbound queue")
    sub = queue.add_subparsers(dest="queue_command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", "-c", default="/etc/mss-relay/relay.toml")

    s = sub.add_parser("list", help="recipients waiting: status, attempts, next attempt, reply")
    with_config(s)
    s.add_argument("--status", choices=("queued", "deferred", "sending", "delivered", "bounced"))
    s.set_defaults(func=cmd_list)
    s = sub.add_parser("show", help="every detail of a row or of a message's rows")
    with_config(s)
    s.add_argument("id", help="row number or 16-hex-digit queue id")
    s.set_defaults(func=cmd_show)
    for name, help_text in (
        ("retry", "try queued or deferred recipients now"),
        ("bounce", "give up now and send the sender a delivery report"),
        ("delete", "remove from the queue without any report"),
    ):
        s = sub.add_parser(name, help=help_text)
        with_config(s)
        s.add_argument("id", help="row number or 16-hex-digit queue id")
        s.set_defaults(func=_action(name))
