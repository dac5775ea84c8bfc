"""mss-relay beside the reference servers, the same load on both, in alternation.

    .venv/bin/python -m bench.compare smtp [--engine sqlite|postgresql] [--pairs 3]
        [--rows per-message,reused,starttls] [--messages 2000] [--size 10240]
        [--concurrency 10]
    .venv/bin/python -m bench.compare imap [--engine E] [--profiles session,login]
        [--clients 10] [--secs 10] [--pairs 3]
    .venv/bin/python -m bench.compare append [--engine E] [--messages 10000]
        [--connections 4] [--pairs 3]
    .venv/bin/python -m bench.compare scale [--engine E] [--sizes 1000,10000,100000]
    .venv/bin/python -m bench.compare bigmsg [--engine E] [--megabytes 25]

It takes the reference lock (`--lock`, the same file `flock(1)` takes), starts the
reference (Postfix, and Dovecot for Postfix's SASL and for IMAP; the scripts named by
`--reference DIR`) and an mss-relay daemon (bench/daemon.py), runs each load on one
then the other, `--pairs` times with the order swapped every pair, prints each figure,
the ratio (mss-relay / reference, higher is better for rates) and the load average at
the time, then the median ratio; it stops what it started.

The SMTP load is bench/smtp_client.py for both servers (one client, the same cost on
both sides): 10 KiB messages, 10 sessions, MAIL/RCPT/DATA pipelined, counted at the
250. Rows: `per-message` (one connection per message, no TLS), `reused` (one
connection per session, no TLS), `starttls` (one connection per message, STARTTLS and
AUTH PLAIN). mss-relay's submission always needs AUTH, so its no-TLS rows also do AUTH
PLAIN on each connection; Postfix's plain port has no AUTH (mss-relay does one round
trip more there).

Everything is bounded: message counts, seconds, socket timeouts.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.daemon import LOGIN, PASSWORD, PERSONAL_BOX, SHARED_BOX, BenchDaemon, rss_kb
from bench.imap_load import Client, bench_message
from bench.smtp_client import SmtpResult, SmtpTarget, run_load

DEFAULT_REFERENCE = os.environ.get("MSS_REFERENCE_DIR", "/work/shared/reference")
DEFAULT_LOCK = os.environ.get("MSS_REFERENCE_LOCK", "/work/team/reference.lock")
DEFAULT_IMAPTEST = os.environ.get("MSS_IMAPTEST", "/work/shared/imaptest/run.sh")

# The reference scripts' fixed ports and accounts (their own defaults).
POSTFIX_PLAIN = 10025
POSTFIX_SUBMISSION = 10587
POSTFIX_CERT = Path("/tmp/postfix-ref/ssl/cert.pem")
DOVECOT_IMAPS = 10993
DOVECOT_USER = ("testuser", "testpass")


def loadavg() -> str:
    return "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


@contextmanager
def reference_lock(path: str) -> Iterator[None]:
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for the reference lock {path} ...", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Reference:
    """The reference scripts; stops, at the end, what it started."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[str] = []

    def run(self, script: str, *args: str, timeout: float = 300.0) -> str:
        # Files, not pipes: the servers a script starts keep its output descriptors
        # open, and a pipe would then never reach its end.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            rc = subprocess.run(
                ["bash", str(self.folder / script), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                timeout=timeout,
                check=False,
            ).returncode
            out.seek(0)
            err.seek(0)
            if rc != 0:
                text = err.read().decode(errors="replace").strip()[-300:]
                raise RuntimeError(f"{script} {' '.join(args)}: exit {rc}: {text}")
            return out.read().decode(errors="replace").strip()

    def start(self, script: str) -> None:
        try:
            self.run(script, "status", timeout=60)
            running = script == "dovecot-ref.sh"  # Postfix's status answers 0 when stopped
        except RuntimeError:
            running = False
        print(f"  {self.run(script, 'start').splitlines()[-1]}", flush=True)
        if not running:
            self.started.append(script)

    def stop_all(self) -> None:
        for script in reversed(self.started):
            try:
                self.run(script, "stop")
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"  could not stop {script}: {exc}", file=sys.stderr)
        self.started.clear()


@dataclass(frozen=True)
class Figure:
    value: float
    unit: str
    note: str = ""
    load: str = ""


def alternate(
    pairs: int,
    ours: Callable[[], Figure],
    theirs: Callable[[], Figure],
    *,
    label: str,
    reference_name: str,
    higher_is_better: bool = True,
) -> float:
    """Run both `pairs` times, the order swapped each pair; print every figure and ratio;
    return the median ratio (mss-relay / reference for rates, reference / mss-relay for
    times, so above 1 is mss-relay ahead either way)."""
    ratios: list[float] = []
    print(f"\n{label}", flush=True)
    for i in range(pairs):
        order = [("mss-relay", ours), (reference_name, theirs)]
        if i % 2:
            order.reverse()
        got: dict[str, Figure] = {}
        for name, fn in order:
            fig = fn()
            got[name] = Figure(fig.value, fig.unit, fig.note, loadavg())
            print(
                f"  pair {i + 1} {name:>10}: {fig.value:10.1f} {fig.unit}  {fig.note}"
                f"  (load {got[name].load})",
                flush=True,
            )
        a, b = got["mss-relay"].value, got[reference_name].value
        ratio = (a / b if b else 0.0) if higher_is_better else (b / a if a else 0.0)
        ratios.append(ratio)
        print(f"  pair {i + 1} ratio: {ratio:.2f}", flush=True)
    median = statistics.median(ratios)
    print(f"  => median ratio {median:.2f} (pairs: {', '.join(f'{r:.2f}' for r in ratios)})")
    return median


# --- SMTP --------------------------------------------------------------------------

SMTP_ROWS = {
    # row: (starttls, reuse)
    "per-message": (False, False),
    "reused": (False, True),
    "starttls": (True, False),
}


def smtp_figure(target: SmtpTarget, args: argparse.Namespace, reuse: bool) -> Figure:
    result: SmtpResult = asyncio.run(
        run_load(
            target,
            messages=args.messages,
            size=args.size,
            concurrency=args.concurrency,
            reuse=reuse,
            max_seconds=args.max_seconds,
        )
    )
    lat = sorted(result.latencies) or [0.0]
    note = (
        f"{result.messages} msgs in {result.seconds:.2f} s, p50 "
        f"{lat[len(lat) // 2] * 1000:.1f} ms, p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms"
    )
    if result.errors:
        note += f", {len(result.errors)} errors: {result.errors[0][:120]}"
    return Figure(result.per_second, "msg/s", note)


def compare_smtp(args: argparse.Namespace, ref: Reference) -> dict[str, float]:
    ref.start("dovecot-ref.sh")  # Postfix's SASL for the AUTH port
    ref.run("postfix-ref.sh", "clean")
    ref.start("postfix-ref.sh")
    results: dict[str, float] = {}
    with BenchDaemon(args.engine) as daemon:
        print(f"  mss-relay pid {daemon.pid}, engine {args.engine}", flush=True)
        for row in args.rows.split(","):
            starttls, reuse = SMTP_ROWS[row]
            ours = SmtpTarget(
                "127.0.0.1",
                daemon.ports["starttls" if starttls else "plain"],
                starttls,
                daemon.ca,
                LOGIN,
                PASSWORD,
                PERSONAL_BOX,
                SHARED_BOX,
            )
            theirs = SmtpTarget(
                "127.0.0.1",
                POSTFIX_SUBMISSION if starttls else POSTFIX_PLAIN,
                starttls,
                POSTFIX_CERT,
                DOVECOT_USER[0] if starttls else None,
                DOVECOT_USER[1] if starttls else None,
                "load@localhost",
                "rcpt@load.test",
            )

            def run_ours(t: SmtpTarget = ours, r: bool = reuse) -> Figure:
                fig = smtp_figure(t, args, r)
                rss = rss_kb(daemon.pid) / 1024
                return Figure(fig.value, fig.unit, fig.note + f", RSS {rss:.0f} MiB")

            def run_theirs(t: SmtpTarget = theirs, r: bool = reuse) -> Figure:
                fig = smtp_figure(t, args, r)
                ref.run("postfix-ref.sh", "wait-queue", "300", timeout=330)  # idle again
                return fig

            label = (
                f"SMTP {row}: {args.messages} x {args.size} B, {args.concurrency} sessions, "
                f"{'STARTTLS + AUTH' if starttls else 'no TLS'}, "
                f"{'connections reused' if reuse else 'one connection per message'} "
                f"(mss-relay {args.engine} vs Postfix -> Maildir)"
            )
            results[row] = alternate(
                args.pairs, run_ours, run_theirs, label=label, reference_name="postfix"
            )
    ref.run("postfix-ref.sh", "clean")
    return results


# --- IMAP: imaptest stress -----------------------------------------------------------

STRESS_LINE = re.compile(
    r"imaptest stress: .*?total=(\d+) cmds, ([0-9.]+) cmds/s, logins/s=([0-9.]+), errors=(\d+)"
)


def imap_client(port: int) -> Client:
    """A blocking IMAPS client (bench/imap_load.py's) for either server on loopback;
    the certificate is not checked (Dovecot's is its own self-signed one)."""
    return Client.unverified(port)


def empty_inbox(port: int, user: str, password: str) -> int:
    """Expunge every message of the account's INBOX; the count it held."""
    c = imap_client(port)
    try:
        c.cmd(f'LOGIN {user} "{password}"')
        lines = c.cmd("SELECT INBOX")
        exists = [int(x.split()[1]) for x in lines if x.endswith(b" EXISTS")]
        n = exists[-1] if exists else 0
        if n:
            c.sock.settimeout(300.0)  # a big box takes a while; still bounded
            c.cmd("STORE 1:* +FLAGS.SILENT (\\Deleted)")
            c.cmd("EXPUNGE")
        c.cmd("LOGOUT")
        return n
    finally:
        c.close()


def imaptest_stress(
    args: argparse.Namespace, port: int, user: str, password: str, profile: str
) -> Figure:
    """One `run.sh stress` run against 127.0.0.1:port (implicit TLS), INBOX emptied
    first; its cmds/s, errors in the note (with the first error line of its log)."""
    before = empty_inbox(port, user, password)
    cmd = [
        args.imaptest, "stress", "--host", "127.0.0.1", "--port", str(port), "--ssl",
        "--user", user, "--pass", password, "--clients", str(args.clients),
        "--secs", str(args.secs), "--profile", profile,
    ]  # fmt: skip
    with tempfile.TemporaryFile() as out:
        subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=args.secs + 600,  # the first run may build imaptest
            check=False,
        )
        out.seek(0)
        text = out.read().decode(errors="replace")
    m = STRESS_LINE.search(text)
    if m is None:
        return Figure(0.0, "cmds/s", f"no imaptest summary: {text.strip()[-300:]!r}")
    errors = int(m.group(4))
    note = f"errors={errors}, logins/s {float(m.group(3)):.1f}, INBOX held {before} before"
    log = re.search(r"^log: (\S+)", text, re.M)
    if errors and log:
        first = next(
            (ln for ln in Path(log.group(1)).read_text(errors="replace").splitlines()
             if ln.startswith(("Error:", "Panic:", "Fatal:"))),
            "",
        )  # fmt: skip
        note += f", first: {first[:160]}"
    return Figure(float(m.group(2)), "cmds/s", note)


def compare_imap(args: argparse.Namespace, ref: Reference) -> dict[str, float]:
    ref.start("dovecot-ref.sh")
    results: dict[str, float] = {}
    with BenchDaemon(args.engine) as daemon:
        port = daemon.ports["imaps"]
        print(f"  mss-relay pid {daemon.pid}, engine {args.engine}, IMAPS {port}", flush=True)
        for profile in args.profiles.split(","):

            def ours(p: str = profile) -> Figure:
                fig = imaptest_stress(args, port, LOGIN, PASSWORD, p)
                rss = rss_kb(daemon.pid) / 1024
                return Figure(fig.value, fig.unit, fig.note + f", RSS {rss:.0f} MiB")

            def theirs(p: str = profile) -> Figure:
                return imaptest_stress(args, DOVECOT_IMAPS, *DOVECOT_USER, p)

            kept = "sessions kept open" if profile == "session" else "login every cycle"
            label = (
                f"IMAP imaptest stress, profile {profile} ({kept}), {args.clients} clients, "
                f"{args.secs} s, IMAPS (mss-relay {args.engine} vs Dovecot)"
            )
            results[f"imap {profile}"] = alternate(
                args.pairs, ours, theirs, label=label, reference_name="dovecot"
            )
    return results


# --- IMAP: APPEND ------------------------------------------------------------------


def append_load(args: argparse.Namespace, port: int, user: str, password: str, box: str) -> Figure:
    """APPEND --messages small messages (bench/imap_load.py's, about 1.1 KB) into the
    account's INBOX over --connections IMAPS connections (one thread each, logged in
    before the clock starts; synchronizing literals, one APPEND at a time per
    connection, counted at the tagged OK). INBOX is emptied first."""
    empty_inbox(port, user, password)
    per = [len(range(i, args.messages, args.connections)) for i in range(args.connections)]
    clients = []
    for _ in range(args.connections):
        c = imap_client(port)
        c.cmd(f'LOGIN {user} "{password}"')
        clients.append(c)
    done = [0] * args.connections
    errors: list[str] = []
    deadline = time.monotonic() + args.max_seconds
    start = threading.Barrier(args.connections + 1)

    def worker(k: int) -> None:
        c = clients[k]
        start.wait(timeout=60)
        try:
            for j in range(per[k]):
                if time.monotonic() > deadline:
                    errors.append("stopped at --max-seconds")
                    return
                raw = bench_message(k + j * args.connections, box)
                c.n += 1
                tag = b"a%d" % c.n
                c.sock.sendall(tag + b" APPEND INBOX {%d}\r\n" % len(raw))
                if not c.read_until(b"+")[-1].startswith(b"+"):
                    raise RuntimeError("no continuation")
                c.sock.sendall(raw + b"\r\n")
                last = c.read_until(tag + b" ")[-1]
                if not last.startswith(tag + b" OK"):
                    raise RuntimeError(f"APPEND: {last[:120]!r}")
                done[k] += 1
        except (OSError, EOFError, RuntimeError) as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.connections)]
    for t in threads:
        t.start()
    start.wait(timeout=60)
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout=args.max_seconds + 60)
    elapsed = time.perf_counter() - t0
    for c in clients:
        c.close()
    n = sum(done)
    note = f"{n} msgs in {elapsed:.1f} s"
    if errors:
        note += f", {len(errors)} errors: {errors[0][:120]}"
    return Figure(n / elapsed if elapsed else 0.0, "msg/s", note)


def compare_append(args: argparse.Namespace, ref: Reference) -> dict[str, float]:
    ref.start("dovecot-ref.sh")
    with BenchDaemon(args.engine) as daemon:
        port = daemon.ports["imaps"]
        print(f"  mss-relay pid {daemon.pid}, engine {args.engine}, IMAPS {port}", flush=True)

        def ours() -> Figure:
            fig = append_load(args, port, LOGIN, PASSWORD, PERSONAL_BOX)
            rss = rss_kb(daemon.pid) / 1024
            return Figure(fig.value, fig.unit, fig.note + f", RSS {rss:.0f} MiB")

        def theirs() -> Figure:
            return append_load(args, DOVECOT_IMAPS, *DOVECOT_USER, "testuser@localhost")

        label = (
            f"IMAP APPEND: {args.messages} small messages into INBOX, {args.connections} "
            f"IMAPS connections (mss-relay {args.engine} vs Dovecot)"
        )
        ratio = alternate(args.pairs, ours, theirs, label=label, reference_name="dovecot")
        empty_inbox(port, LOGIN, PASSWORD)
        empty_inbox(DOVECOT_IMAPS, *DOVECOT_USER)
    return {"append": ratio}


# --- one big message ---------------------------------------------------------------


def big_message(args: argparse.Namespace, ref: Reference) -> dict[str, float]:
    """The daemon's peak RSS above idle while it accepts one message of --megabytes
    (submission, no TLS, AUTH PLAIN), as a multiple of the message's size. No
    reference: Postfix streams to a queue file, its smtpd stays small whatever the
    size."""
    from bench.daemon import reset_peak
    from bench.smtp_client import close_session, dot_stuff, make_message, open_session, send_one

    results: dict[str, float] = {}
    for i in range(args.pairs):
        # A new daemon each run: memory a big message once used stays in the process
        # (RSS does not shrink), so a second run in the same daemon would show less.
        with BenchDaemon(args.engine) as daemon:
            target = SmtpTarget(
                "127.0.0.1",
                daemon.ports["plain"],
                False,
                daemon.ca,
                LOGIN,
                PASSWORD,
                PERSONAL_BOX,
                SHARED_BOX,
            )
            data = make_message(target.sender, target.recipient, args.megabytes << 20, 0)
            stuffed = dot_stuff(data) + b".\r\n"

            async def one(t: SmtpTarget = target, payload: bytes = stuffed) -> float:
                session = await open_session(t)
                took = await send_one(t, *session, payload)
                await close_session(*session)
                return took

            asyncio.run(run_load(target, messages=20, size=10240, concurrency=2, reuse=True))
            if i == 0:
                print(f"\nOne {len(data) / 1e6:.1f} MB message, mss-relay {args.engine}")
            time.sleep(1.0)
            idle = rss_kb(daemon.pid)
            reset_peak(daemon.pid)
            took = asyncio.run(one())
            peak = rss_kb(daemon.pid, "VmHWM")
            ratio = (peak - idle) * 1024 / len(data)
            print(
                f"  run {i + 1}: accepted in {took:.2f} s; RSS idle {idle / 1024:.0f} MiB, "
                f"peak {peak / 1024:.0f} MiB: {ratio:.2f}x the message above idle "
                f"(load {loadavg()})",
                flush=True,
            )
            results[f"run {i + 1} (x message size, lower is better)"] = ratio
    return results


# --- main --------------------------------------------------------------------------

COMMANDS = {
    "smtp": compare_smtp,
    "bigmsg": big_message,
    "imap": compare_imap,
    "append": compare_append,
}
NO_REFERENCE = frozenset({"bigmsg"})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=sorted(COMMANDS))
    p.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--reference", default=DEFAULT_REFERENCE, help="the reference scripts")
    p.add_argument("--lock", default=DEFAULT_LOCK, help="the reference servers' lock file")
    p.add_argument("--rows", default=",".join(SMTP_ROWS))
    p.add_argument("--messages", type=int, help="smtp: 2000 (default), append: 10000")
    p.add_argument("--connections", type=int, default=4, help="append: IMAP connections")
    p.add_argument("--size", type=int, default=10240)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--max-seconds", type=float, default=300.0)
    p.add_argument("--megabytes", type=int, default=25, help="bigmsg: the message's size")
    p.add_argument("--profiles", default="session,login", help="imap: imaptest profiles")
    p.add_argument("--clients", type=int, default=10, help="imap: imaptest clients")
    p.add_argument("--secs", type=int, default=10, help="imap: seconds per imaptest run")
    p.add_argument("--imaptest", default=DEFAULT_IMAPTEST, help="imap: imaptest's run.sh")
    args = p.parse_args()
    args.pairs = max(1, min(args.pairs, 20))
    args.clients = max(1, min(args.clients, 200))
    args.secs = max(1, min(args.secs, 600))
    if args.messages is None:
        args.messages = 10_000 if args.what == "append" else 2000
    args.messages = max(1, min(args.messages, 200_000))
    args.connections = max(1, min(args.connections, 50))
    ref = Reference(Path(args.reference))
    print(
        f"bench.compare {args.what}, {time.strftime('%Y-%m-%d %H:%M')}, load {loadavg()}, "
        f"{os.cpu_count()} cores",
        flush=True,
    )
    if args.what in NO_REFERENCE:
        results = COMMANDS[args.what](args, ref)
    else:
        with reference_lock(args.lock):
            try:
                results = COMMANDS[args.what](args, ref)
            finally:
                ref.stop_all()
    print("\nsummary (median ratio, mss-relay / reference; above 1: mss-relay ahead)")
    for name, ratio in results.items():
        print(f"  {name}: {ratio:.2f}")


if __name__ == "__main__":
    main()
