"""`mss-relay` command line: serve, check-config, demo, dev-pki, passwd, audit, ...

Exit status: 0 success, 1 a check failed (audit verify), 2 bad input (config, usage).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import relay
from relay.logsetup import setup_logging

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `cat big | head`
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_INTERNAL = 70  # EX_SOFTWARE (sysexits.h)
DEFAULT_CONFIG = "/etc/mss-relay/relay.toml"


def _load_config_or_exit(path: Path):  # type: ignore[no-untyped-def]
    from relay.config import ConfigError, load

    try:
        return load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None


# --- commands -----------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from relay.app import run_serve

    setup_logging(args.log_format)
    return run_serve(Path(args.config))


def _config_path(args: argparse.Namespace) -> Path:
    """`check-config FILE` or `check-config --config FILE` (the same file)."""
    if args.file is not None and args.config is not None and args.file != args.config:
        print(
            f"mss-relay check-config: two files given ({args.file}, --config {args.config})",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_BAD_INPUT)
    return Path(args.file or args.config or DEFAULT_CONFIG)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Exit 2 exactly when `serve` would refuse the file: the same checks
    (`relay.app.load_for_serving`: the config, the files it names, the policies)."""
    from relay.app import load_for_serving
    from relay.config import ConfigError, summary
    from relay.config.effective import effective
    from relay.policy.model import load_policies

    try:
        config = load_for_serving(_config_path(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(
            f"mss-relay check-config: {len(exc.problems)} problem(s); serve refuses this file",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    policies = load_policies(config.server.policy_dir)
    if args.effective:
        sys.stdout.write(effective(config))
        return EXIT_OK
    jwks = config.issuer.jwks_file if config.issuer is not None else None
    if jwks is not None:
        from relay.identity.issuer import IssuerUnavailable, parse_jwks

        try:
            kids = [k.kid for k in parse_jwks(jwks.read_bytes())]
            print(f"issuer keys: {len(kids)} in {jwks} ({', '.join(map(str, kids))})")
        except (IssuerUnavailable, OSError) as exc:
            # serve starts (keys are read again when a token comes), tokens are refused
            print(f"warning: {config.path}: issuer.jwks_file: {exc}", file=sys.stderr)
    print(summary(config))
    where = config.server.policy_dir or "built-in defaults"
    print(f"policies: {where}; patient domain {policies.patient.domain}")
    return EXIT_OK


def cmd_passwd(args: argparse.Namespace) -> int:
    from relay.identity.passwords import hash_password

    try:
        if sys.stdin.isatty():
            first = getpass.getpass("Password: ")
            if first != getpass.getpass("Again: "):
                print("passwords differ", file=sys.stderr)
                return EXIT_BAD_INPUT
        else:
            line = sys.stdin.readline()
            if not line:
                raise EOFError
            first = line.rstrip("\r\n")
    except EOFError:
        print("mss-relay passwd: no password read (end of input)", file=sys.stderr)
        return EXIT_BAD_INPUT
    if len(first) < 8:
        print("password too short: at least 8 characters", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(hash_password(first))
    return EXIT_OK


def cmd_dev_pki(args: argparse.Namespace) -> int:
    from relay.tls.pki import generate_dev_pki

    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    pki = generate_dev_pki(directory, args.hostname)
    print(f"test PKI written to {directory} (hostname {args.hostname}); NOT for production")
    for name, fingerprint in sorted(pki.fingerprints.items()):
        print(f"  {name:24} sha256 {fingerprint}")
    return EXIT_OK


def cmd_dev_issuer(args: argparse.Namespace) -> int:
    from relay.identity.devissuer import write_dev_issuer

    key, jwks = write_dev_issuer(Path(args.dir))
    print(f"test token issuer: signing key {key} (0600), public keys {jwks}; NOT for production")
    return EXIT_OK


def cmd_dev_token(args: argparse.Namespace) -> int:
    from relay.identity.devissuer import (
        MAX_DEV_TOKEN_LIFETIME_SECONDS,
        DevTokenError,
        mint_dev_token,
    )

    if not 1 <= args.lifetime <= MAX_DEV_TOKEN_LIFETIME_SECONDS:
        print(
            f"mss-relay dev-token: --lifetime must be 1 to {MAX_DEV_TOKEN_LIFETIME_SECONDS} "
            f"seconds, got {args.lifetime}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    config = _load_config_or_exit(Path(args.config))
    try:
        print(mint_dev_token(config, args.person, lifetime_seconds=args.lifetime))
    except DevTokenError as exc:
        print(f"mss-relay dev-token: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from relay.identity.devissuer import JWKS_FILE

    config_path = Path(args.config)
    pki_dir = Path(args.pki_dir)
    if not (pki_dir / "server.pem").exists():
        cmd_dev_pki(argparse.Namespace(dir=str(pki_dir), hostname="localhost"))
    if not (pki_dir / JWKS_FILE).exists():
        cmd_dev_issuer(argparse.Namespace(dir=str(pki_dir)))
    setup_logging(args.log_format)
    from relay.app import run_serve

    return run_serve(config_path)


async def _with_store(
    config_path: Path, action: Callable[..., Awaitable[int]], *extra: object
) -> int:
    from relay.errors import StoreError
    from relay.store.store import Store

    config = _load_config_or_exit(config_path)
    try:
        store = await Store.open(config.storage)
    except StoreError as exc:
        # Missing or wrong key file, unreachable database: say why (relay.store.keys).
        print(f"mss-relay: cannot open the store: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return await action(store, *extra)
    finally:
        await store.close()


def _filter(args: argparse.Namespace, *, newest_first: bool):  # type: ignore[no-untyped-def]
    """The audit filter the options ask for; a clear refusal for a bad time."""
    from relay.audit.timespec import TimeSpecError, parse_when
    from relay.store.store import AuditFilter

    now = dt.datetime.now().astimezone()

    def when(option: str, value: str | None) -> dt.datetime | None:
        if value is None:
            return None
        try:
            return parse_when(value, now)
        except TimeSpecError as exc:
            print(f"mss-relay audit: {option}: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_BAD_INPUT) from None

    if args.limit is not None and args.limit < 1:
        print(f"mss-relay audit: --limit must be at least 1, got {args.limit}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)
    message_id = args.message_id.strip().strip("<>") if args.message_id else None
    return AuditFilter(
        box=args.box,
        person=args.person,
        action=args.action,
        since=when("--since", args.since),
        until=when("--until", args.until),
        limit=args.limit,
        message_id=message_id or None,
        newest_first=newest_first,
    )


async def _check_names(store, args: argparse.Namespace) -> bool:  # type: ignore[no-untyped-def]
    """A box or person neither the config nor the store has ever known is an error
    (a typo would otherwise print nothing, as if nothing had happened)."""
    config = _load_config_or_exit(Path(args.config))
    ok = True
    if args.box is not None:
        boxes = {m.address for m in config.mailboxes}
        if args.box.lower() not in boxes and not await store.audit_knows(box=args.box):
            print(
                f"mss-relay: unknown box {args.box!r}: not in {config.path}, "
                "never in the audit trail",
                file=sys.stderr,
            )
            ok = False
    if args.person is not None:
        people = {p.id for p in config.people}
        if args.person not in people and not await store.audit_knows(person=args.person):
            print(
                f"mss-relay: unknown person {args.person!r}: not in {config.path}, "
                "never in the audit trail (give the person's id, as in [[people]] id)",
                file=sys.stderr,
            )
            ok = False
    return ok


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from relay.store.store import Store

    async def run(store: Store) -> int:
        result = await store.verify_audit()
        print(result)
        return EXIT_OK if result.ok else EXIT_CHECK_FAILED

    return asyncio.run(_with_store(Path(args.config), run))


def cmd_audit_show(args: argparse.Namespace) -> int:
    """Oldest first; with --limit N, the newest N rows, newest first."""
    from relay.audit.export import render_row, row_to_json
    from relay.store.store import Store

    flt = _filter(args, newest_first=args.limit is not None)

    async def run(store: Store) -> int:
        if not await _check_names(store, args):
            return EXIT_BAD_INPUT
        for row in await store.audit_rows(flt):
            print(row_to_json(row) if args.json else render_row(row))
        return EXIT_OK

    return asyncio.run(_with_store(Path(args.config), run))


def cmd_audit_export(args: argparse.Namespace) -> int:
    """JSON lines in chain order; with --limit N, the newest N rows (still in order)."""
    from relay.audit.events import AuditExported
    from relay.audit.export import ExportError, encrypt_to, json_lines
    from relay.store.store import Store

    flt = _filter(args, newest_first=args.limit is not None)

    async def run(store: Store) -> int:
        if not await _check_names(store, args):
            return EXIT_BAD_INPUT
        rows = await store.audit_rows(flt)
        if flt.newest_first:
            rows.reverse()
        data = json_lines(rows)
        recipient = None
        if args.encrypt_to:
            try:
                data, recipient = encrypt_to(Path(args.encrypt_to), data)
            except ExportError as exc:
                print(exc, file=sys.stderr)
                return EXIT_BAD_INPUT
        if args.output == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:
            try:
                await asyncio.to_thread(Path(args.output).write_bytes, data)
            except OSError as exc:
                print(f"mss-relay audit export: {args.output}: {exc.strerror}", file=sys.stderr)
                return EXIT_BAD_INPUT
        filters = " ".join(
            f"{k}={v}"
            for k, v in vars(args).items()
            if k in {"box", "person", "action", "since", "until", "message_id", "limit"}
            and v is not None
        )
        await store.record(AuditExported(rows=len(rows), encrypted_to=recipient, filters=filters))
        print(f"{len(rows)} audit rows exported", file=sys.stderr)
        return EXIT_OK

    return asyncio.run(_with_store(Path(args.config), run))


def cmd_trust_space_import(args: argparse.Namespace) -> int:
    from relay.audit.events import TrustSpaceImported
    from relay.store.store import Store, TrustEntry
    from relay.tls.trust_space import TrustSpaceError, parse_trust_space

    path = Path(args.file)
    try:
        space = parse_trust_space(path.read_bytes())
    except OSError as exc:
        print(f"{path}: cannot read ({exc.strerror})", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrustSpaceError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    entries = [
        TrustEntry(
            domain=d.ascii_name,
            name=d.name,
            certificate_dn=d.operator_dn,
            description=d.description,
            updated=d.updated.isoformat() if d.updated else None,
        )
        for d in space.domains
    ]
    generated = space.generated.isoformat() if space.generated else None

    async def run(store: Store) -> int:
        await store.trust_space_replace(
            entries,
            TrustSpaceImported(source=str(path), domains=len(entries), generated=generated),
        )
        return EXIT_OK

    status = asyncio.run(_with_store(Path(args.config), run))
    print(f"trust space: {len(entries)} domains imported from {path} (generated {generated})")
    return status


def cmd_trust_space_list(args: argparse.Namespace) -> int:
    from relay.store.store import Store

    async def run(store: Store) -> int:
        entries = await store.trust_space_entries()
        for e in entries:
            print(f"{e.domain:40} {e.certificate_dn or '(no certificate DN listed)'}")
        print(f"{len(entries)} domains")
        return EXIT_OK

    return asyncio.run(_with_store(Path(args.config), run))


def cmd_patients_list(args: argparse.Namespace) -> int:
    from relay.store import conversations
    from relay.store.store import Store

    async def run(store: Store) -> int:
        config = _load_config_or_exit(Path(args.config))
        known = {m.address for m in config.mailboxes}
        if args.box.lower() not in known and not await store.audit_knows(box=args.box):
            print(f"mss-relay: unknown box {args.box!r}: not in {config.path}", file=sys.stderr)
            return EXIT_BAD_INPUT
        found = await conversations.for_box(store, args.box)
        for c in found:
            when = c.updated_at.astimezone().strftime("%Y-%m-%d %H:%M")
            closed = c.closed_at.astimezone().strftime("%Y-%m-%d %H:%M") if c.closed_at else "-"
            print(
                f"{c.ins}  {c.state:6}  opened by {c.opened_by:12} "
                f"{c.opened_at.astimezone():%Y-%m-%d %H:%M}  closed {closed}  "
                f"last {when}  messages {c.messages}"
            )
        print(f"{len(found)} patient conversations for {args.box.lower()}")
        return EXIT_OK

    return asyncio.run(_with_store(Path(args.config), run))


def cmd_key_init(args: argparse.Namespace) -> int:
    """Create the store's keys if it has none; check them if it has (idempotent)."""
    from relay.errors import StoreError
    from relay.store.crypto import key_id
    from relay.store.store import Store

    async def run() -> int:
        config = _load_config_or_exit(Path(args.config))
        try:
            store = await Store.open(config.storage, may_create_keys=True)
        except StoreError as exc:
            print(f"mss-relay: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        try:
            assert store.keys is not None
            paths = {"blob": config.storage.key_file, "audit": config.storage.audit_key_path}
            ids = {"blob": store.keys.ring.active_id, "audit": key_id(store.keys.audit_key)}
            for kind, label in (("blob", "message key"), ("audit", "audit key")):
                done = "created" if kind in store.created_keys else "in place"
                print(f"{label:12} {ids[kind]}  {paths[kind]}  ({done})")
            if store.created_keys:
                print(
                    "Back up these key files now, apart from the database backups: "
                    "without them the messages cannot be read and the audit trail "
                    "cannot be proven."
                )
            return EXIT_OK
        finally:
            await store.close()

    return asyncio.run(run())


def cmd_ins_check(args: argparse.Namespace) -> int:
    from relay.ins import InsError, explain, parse_ins

    print(explain(args.number))
    try:
        parse_ins(args.number.replace(" ", ""))
    except InsError:
        return EXIT_CHECK_FAILED
    return EXIT_OK


# --- parser -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mss-relay", description=__doc__)
    p.add_argument("--version", action="version", version=f"mss-relay {relay.__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", "-c", default=DEFAULT_CONFIG)

    s = sub.add_parser("serve", help="run the daemon")
    with_config(s)
    s.add_argument("--log-format", choices=("json", "console"), default="json")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser(
        "check-config",
        help="validate a config file as serve would (exit 2 when serve would refuse it)",
    )
    s.add_argument("file", nargs="?", help=f"the config file (or --config; {DEFAULT_CONFIG})")
    s.add_argument("--config", "-c", default=None)
    s.add_argument(
        "--effective",
        action="store_true",
        help="print every setting as serve uses it, defaults and resolved paths included",
    )
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("passwd", help="read a password, print its hash for the config")
    s.set_defaults(func=cmd_passwd)

    s = sub.add_parser("dev-pki", help="write a TEST PKI (IGC-Santé TEST names)")
    s.add_argument("dir")
    s.add_argument("--hostname", default="localhost")
    s.set_defaults(func=cmd_dev_pki)

    s = sub.add_parser("dev-issuer", help="write a TEST token issuer's key and JWKS")
    s.add_argument("dir")
    s.set_defaults(func=cmd_dev_issuer)

    s = sub.add_parser("dev-token", help="mint a short-lived TEST access token for PERSON")
    s.add_argument("person")
    with_config(s)
    s.add_argument("--lifetime", type=int, default=600, help="seconds (default 600)")
    s.set_defaults(func=cmd_dev_token)

    s = sub.add_parser("demo", help="make the test PKI if needed and serve the demo config")
    s.add_argument("--config", default="config/demo.toml")
    s.add_argument("--pki-dir", default="var/pki")
    s.add_argument("--log-format", choices=("json", "console"), default="console")
    s.set_defaults(func=cmd_demo)

    trust = sub.add_parser("trust-space", help="the ANS MSSanté whitelist")
    tsub = trust.add_subparsers(dest="trust_command", required=True)
    s = tsub.add_parser("import", help="load listeblanchemssante.xml (replaces the list)")
    with_config(s)
    s.add_argument("file")
    s.set_defaults(func=cmd_trust_space_import)
    s = tsub.add_parser("list", help="print the imported domains and certificate DNs")
    with_config(s)
    s.set_defaults(func=cmd_trust_space_list)

    patients = sub.add_parser("patients", help="patient conversations of a box")
    psub = patients.add_subparsers(dest="patients_command", required=True)
    s = psub.add_parser("list", help="conversations (INS, open/closed) of BOX")
    with_config(s)
    s.add_argument("box")
    s.set_defaults(func=cmd_patients_list)

    key = sub.add_parser("key", help="the store's key files")
    ksub = key.add_subparsers(dest="key_command", required=True)
    s = ksub.add_parser(
        "init", help="create the message and audit keys of a new store (or check them)"
    )
    with_config(s)
    s.set_defaults(func=cmd_key_init)
    from relay.store.cli import register as register_backup
    from relay.store.cli import register_key

    register_key(ksub)
    register_backup(sub)

    ins = sub.add_parser("ins", help="patient identifiers (INS)")
    isub = ins.add_subparsers(dest="ins_command", required=True)
    s = isub.add_parser("check", help="check an INS matricule and explain what is wrong")
    s.add_argument("number")
    s.set_defaults(func=cmd_ins_check)

    audit = sub.add_parser("audit", help="verify, read and export the audit trail")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    s = asub.add_parser("verify", help="check the hash chain; report the first broken row")
    with_config(s)
    s.set_defaults(func=cmd_audit_verify)
    for name, func, help_text in (
        ("show", cmd_audit_show, "print events"),
        ("export", cmd_audit_export, "write events as JSON lines, optionally encrypted"),
    ):
        s = asub.add_parser(name, help=help_text)
        with_config(s)
        s.add_argument("--box")
        s.add_argument("--person")
        s.add_argument("--action", help="exact action, or a prefix ending in '.'")
        s.add_argument("--message-id", help="rows naming this Message-ID (with or without <>)")
        s.add_argument(
            "--since", help="2026-12-01, 2026-12-01T08:30, 08:30, 2h, 7d, today, yesterday"
        )
        s.add_argument("--until", help="the same forms as --since (local time if no offset)")
        s.add_argument("--limit", type=int, help="the newest N rows")
        if name == "show":
            s.add_argument("--json", action="store_true")
        else:
            s.add_argument("--encrypt-to", metavar="PUBLIC_KEY_FILE")
            s.add_argument("--output", "-o", default="-")
        s.set_defaults(func=func)
    from relay.delivery.cli import register as register_queue

    register_queue(sub)
    from relay.web.cli import register as register_web

    register_web(sub)
    from relay.install import register as register_install

    register_install(sub)
    from relay.control.cli import register as register_control

    register_control(sub)
    from relay.upstream.cli import register as register_upstream

    register_upstream(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Logs to stderr from the start, for every command: stdout carries only the
    # command's output (JSON lines for `audit export`, `audit show --json`). Warnings
    # and errors only: the audit events a command records are in the trail, not
    # repeated on the terminal (`serve` logs at INFO, its own setup).
    setup_logging("console", level=logging.WARNING)
    try:
        result: int = args.func(args)
    except BrokenPipeError:
        # The reader went away (`queue list | head`): stop quietly, as Unix filters do.
        # Point stdout at /dev/null so the interpreter's final flush does not fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("mss-relay: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        # The last net: a bug, not bad input. One line; the traceback on request.
        if os.environ.get("MSS_RELAY_TRACEBACK"):
            raise
        print(
            f"mss-relay: internal error: {type(exc).__name__}: {exc} "
            "(run again with MSS_RELAY_TRACEBACK=1 for the traceback, and report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    return result


if __name__ == "__main__":
    raise SystemExit(main())
