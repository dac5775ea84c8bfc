"""`mss-relay reload`, `status`, `who`, `kick`: the control socket's subcommands.

Each reads the config file only to find the socket (`relay.control.paths`; a file
that does not load still names it: `reload` is how one learns what is wrong), sends
one request, prints the answer (text, or `--json`). Exit status: 0 done, 1 the
daemon cannot be reached (the message names the socket), 2 refused (a reload of a
bad file, an unknown person).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay.control.client import ControlUnavailable, call
from relay.control.model import (
    kick_from_json,
    reload_from_json,
    render_kick,
    render_reload,
    render_status,
    render_upstream_sync,
    render_who,
    status_from_json,
    upstream_sync_from_json,
    who_from_json,
)
from relay.control.paths import control_socket_from_text
from relay.control.protocol import Command, ProtocolError, Request

EXIT_OK = 0
EXIT_UNREACHABLE = 1
EXIT_REFUSED = 2

DEFAULT_CONFIG = "/etc/mss-relay/relay.toml"

_RENDER: dict[Command, Callable[[Any], str]] = {
    Command.STATUS: lambda d: render_status(status_from_json(d)),
    Command.WHO: lambda d: render_who(who_from_json(d)),
    Command.KICK: lambda d: render_kick(kick_from_json(d)),
    Command.RELOAD: lambda d: render_reload(reload_from_json(d)),
    Command.UPSTREAM_SYNC: lambda d: render_upstream_sync(upstream_sync_from_json(d)),
}


def _socket(args: argparse.Namespace) -> Path | None:
    if args.socket:
        return Path(args.socket)
    path = Path(args.config)
    try:
        text = path.read_text(encoding="utf-8")
        return control_socket_from_text(text, path, os.environ)
    except OSError as exc:
        print(f"mss-relay: {path}: cannot read ({exc.strerror or exc})", file=sys.stderr)
    except UnicodeDecodeError:
        print(f"mss-relay: {path}: not UTF-8 text", file=sys.stderr)
    except tomllib.TOMLDecodeError as exc:
        print(
            f"mss-relay: {path}: not TOML ({exc}); the control socket cannot be found in "
            "it: fix the file, or name the socket with --socket",
            file=sys.stderr,
        )
    return None


def run(args: argparse.Namespace, request: Request, *, timeout: float | None = None) -> int:
    path = _socket(args)
    if path is None:
        return EXIT_REFUSED
    try:
        response = call(path, request) if timeout is None else call(path, request, timeout=timeout)
        text = None
        if response.result is not None and not args.json:
            text = _RENDER[request.command](response.result)
    except ControlUnavailable as exc:
        print(f"mss-relay: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ProtocolError as exc:
        print(f"mss-relay: unexpected answer on {path}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json and response.result is not None:
        print(json.dumps(response.result, ensure_ascii=False, indent=2))
    elif text is not None:
        print(text)
    if not response.ok:
        if response.result is None:
            print(f"mss-relay {request.command.value}: {response.error}", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    return run(args, Request(Command.RELOAD))


def cmd_status(args: argparse.Namespace) -> int:
    return run(args, Request(Command.STATUS))


def cmd_who(args: argparse.Namespace) -> int:
    return run(args, Request(Command.WHO))


def cmd_kick(args: argparse.Namespace) -> int:
    return run(args, Request(Command.KICK, person=args.person, box=args.box))


def register(sub: Any) -> None:
    """Add the subcommands to `mss-relay`'s parser (`relay.cli.build_parser`)."""

    def common(name: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> Any:
        s = sub.add_parser(name, help=help_text)
        s.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="to find the socket")
        s.add_argument("--socket", help="the control socket (default: from the config)")
        s.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
        s.set_defaults(func=func)
        return s

    common("reload", "apply the config file now; print what changed or why not", cmd_reload)
    common("status", "version, listeners, certificates, queue, CRLs, audit anchor", cmd_status)
    common("who", "open IMAP and SMTP sessions: person, box, client, since, TLS", cmd_who)
    s = common("kick", "cut PERSON's sessions (audited)", cmd_kick)
    s.add_argument("person", metavar="PERSON", help="a person id of the config")
    s.add_argument("--box", help="only the sessions acting as or on this box")
