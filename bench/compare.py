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
`--reference DIR`) and an mss-relay daemon (bench/daemon.py), runs each load once on
both as a warm-up (printed, not counted), then on one then the other, `--pairs` times
with the order swapped every pair, prints each figure,
the ratio (mss-relay / reference, higher is better for rates) and the load average at
the time, then the median ratio; it stops what it started.

The SMTP load is bench/smtp_client.py for both servers (one client, the same cost on
both sides): 10 KiB messages, 10 sessions, MAIL/RCPT/DATA pipelined, counted at the
250. Rows: `per-message` (one connection per message, no TLS), `reused` (one
connection per session, no TLS), `starttls` (one connection per message, STARTTLS and
AUTH PLAIN). mss-relay's submission always needs AUTH, so its no-TLS rows also do AUTH
PLAIN on each connection; Postfix's plain port has no AUTH (mss-relay does one round
trip more there).

`imap`: Dovecot's imaptest stress (`--imaptest`, the team's run.sh) over IMAPS, profile
`session` (sessions kept open) and `login` (login every cycle); cmds/s and its errors
count. The account's INBOX is emptied before each run (stress appends and expunges
there); mss-relay's account is the bench daemon's own, thrown away after.

`append`: --messages small messages (about 1.3 KB) APPENDed into INBOX over
--connections IMAPS connections, one APPEND in flight per connection (synchronizing
literal), counted at the tagged OK; msg/s. INBOX is emptied before each run.

`scale`: for each of --sizes, an INBOX of that many messages, half \\Seen: mss-relay's
filled through its store with the daemon stopped (Store.accept, 200 at a time), the
reference's written as Maildir files (`dovecot-ref.sh reset` first; it indexes them at
the first SELECT). The same client then times on each: the first SELECT, SELECT
(median of 5 after a warm-up), `FETCH 1:* (UID FLAGS)`, `UID SEARCH UNSEEN`, APPEND of
one message into the box and into an empty folder (no folder selected, alternated,
median of 50), and the RSS after the first SELECT above the idle figure (mss-relay:
the daemon; Dovecot: the session's imap process). For mss-relay also the SMTP
acceptance (submission, AUTH, session kept) into the box and into an empty box (the
shared one), median of 50. One table per size, Dovecot's figure beside; no
alternation (one run each). About 6 minutes for 1,000/10,000/100,000 on SQLite, of
which the 100,000 fill is about 100 s.

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
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # a new machine has no /work/team
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

    def fresh_dovecot(self) -> None:
        """Dovecot on wiped mail and index files, as mss-relay starts on a new store:
        its Maildir and index files kept what earlier runs left (imaptest's folders,
        the logs of every expunge), and its stress figure fell through a sitting
        (2,244-2,514 cmds/s in the first run of 2026-12-02's, 776-1,146 in a later
        one), which flattered the ratio."""
        self.run("dovecot-ref.sh", "reset")  # stops it: `start` counts it as ours
        self.start("dovecot-ref.sh")

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
    """Run both once as a warm-up (printed, not counted: the first run on a new store or
    a fresh reference pays for its files, caches and pools), then both `pairs` times,
    the order swapped each pair; print every figure and ratio; return the median ratio
    (mss-relay / reference for rates, reference / mss-relay for times, so above 1 is
    mss-relay ahead either way)."""
    ratios: list[float] = []
    print(f"\n{label}", flush=True)
    for name, fn in (("mss-relay", ours), (reference_name, theirs)):
        fig = fn()
        print(
            f"  warm-up {name:>10}: {fig.value:10.1f} {fig.unit}  {fig.note}  (not counted)",
            flush=True,
        )
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
    ref.fresh_dovecot()
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
    """APPEND --messages small messages (bench/imap_load.py's, about 1.3 KB) into the
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
    ref.fresh_dovecot()
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


# --- IMAP: costs as a box grows --------------------------------------------------------

DOVECOT_DIR = Path(os.environ.get("REF_DIR", "/tmp/dovecot-ref"))
SCALE_EMPTY = "scale-empty"  # the empty folder both servers get for the APPEND baseline
SCALE_ACCEPTS = 50  # new messages timed into the full box, and as many into an empty one


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000 if times else 0.0


def append_one(c: Client, folder: str, raw: bytes) -> float:
    """One APPEND (synchronizing literal) on a logged-in client; seconds to its OK."""
    c.n += 1
    tag = b"s%d" % c.n
    t0 = time.perf_counter()
    c.sock.sendall(tag + b' APPEND "%s" {%d}\r\n' % (folder.encode(), len(raw)))
    if not c.read_until(b"+")[-1].startswith(b"+"):
        raise RuntimeError("APPEND: no continuation")
    c.sock.sendall(raw + b"\r\n")
    last = c.read_until(tag + b" ")[-1]
    took = time.perf_counter() - t0
    if not last.startswith(tag + b" OK"):
        raise RuntimeError(f"APPEND {folder}: {last[:120]!r}")
    return took


def scale_measure(
    port: int, user: str, password: str, n: int, rss: Callable[[], float], box: str
) -> dict[str, float]:
    """The same IMAP measurements on either server, INBOX holding `n` messages (half
    \\Seen): times in ms, RSS in MiB (from `rss()`)."""
    out: dict[str, float] = {}
    c = imap_client(port)
    c.sock.settimeout(600.0)  # the first SELECT of a big Maildir indexes it
    try:
        c.cmd(f'LOGIN {user} "{password}"')
        out["rss_idle"] = rss()
        t0 = time.perf_counter()
        lines = c.cmd("SELECT INBOX")
        out["select_first"] = (time.perf_counter() - t0) * 1000
        exists = [int(x.split()[1]) for x in lines if x.endswith(b" EXISTS")]
        out["exists"] = exists[-1] if exists else -1
        out["rss_selected"] = rss()
        for key, text, runs in (
            ("select", "SELECT INBOX", 5),
            ("fetch", "FETCH 1:* (UID FLAGS)", 5),
            ("search", "UID SEARCH UNSEEN", 5),
        ):
            times = []
            for i in range(runs + 1):  # one warm-up, not counted
                t0 = time.perf_counter()
                lines = c.cmd(text)
                if i:
                    times.append(time.perf_counter() - t0)
            out[key] = median_ms(times)
            if key == "fetch":
                out["fetch_lines"] = sum(1 for x in lines if x.startswith(b"* "))
            if key == "search":
                hits = [x for x in lines if x.startswith(b"* SEARCH")]
                out["unseen"] = len(hits[0].split()) - 2 if hits else 0
        c.cmd("CLOSE")  # no folder selected: the APPENDs below differ by size only
        c.n += 1
        c.sock.sendall(b'c%d CREATE "%s"\r\n' % (c.n, SCALE_EMPTY.encode()))
        c.read_until(b"c%d " % c.n)  # NO if it is there already: fine
        full: list[float] = []
        empty: list[float] = []
        for i in range(SCALE_ACCEPTS + 2):  # alternated; two warm-ups each
            raw = bench_message(n + i, box)
            a, b = append_one(c, "INBOX", raw), append_one(c, SCALE_EMPTY, raw)
            if i >= 2:
                full.append(a)
                empty.append(b)
        out["append_full"], out["append_empty"] = median_ms(full), median_ms(empty)
        out["rss_end"] = rss()
        c.cmd("LOGOUT")
    finally:
        c.close()
    return out


def smtp_accept_times(daemon: BenchDaemon) -> tuple[float, float]:
    """mss-relay's SMTP acceptance (submission, no TLS, AUTH PLAIN, one session per
    box kept open), ms to the 250: median of SCALE_ACCEPTS messages into the full box
    (martin's INBOX) and as many into an empty one (the shared box), alternated."""
    from bench.smtp_client import close_session, dot_stuff, make_message, open_session, send_one

    def target(rcpt: str) -> SmtpTarget:
        return SmtpTarget(
            "127.0.0.1", daemon.ports["plain"], False, daemon.ca, LOGIN, PASSWORD,
            PERSONAL_BOX, rcpt,
        )  # fmt: skip

    async def run() -> tuple[float, float]:
        full_t, empty_t = target(PERSONAL_BOX), target(SHARED_BOX)
        full_s, empty_s = await open_session(full_t), await open_session(empty_t)
        full: list[float] = []
        empty: list[float] = []
        try:
            for i in range(SCALE_ACCEPTS + 2):
                a = await send_one(full_t, *full_s, dot_stuff(make_message(
                    full_t.sender, full_t.recipient, 2048, i)) + b".\r\n")  # fmt: skip
                b = await send_one(empty_t, *empty_s, dot_stuff(make_message(
                    empty_t.sender, empty_t.recipient, 2048, i)) + b".\r\n")  # fmt: skip
                if i >= 2:
                    full.append(a)
                    empty.append(b)
        finally:
            await close_session(*full_s)
            await close_session(*empty_s)
        return median_ms(full), median_ms(empty)

    return asyncio.run(asyncio.wait_for(run(), 300))


def fill_relay(daemon: BenchDaemon, n: int) -> float:
    """Stop the daemon, put `n` messages (half \\Seen) in martin's INBOX through the
    store (bench/imap_load.py's fill: Store.accept, the path SMTP takes after DATA,
    group-committed 200 at a time), start it again; seconds the fill took."""
    from bench.imap_load import fill, logging_quiet
    from relay.config.loader import load
    from relay.store.store import Store

    took = [0.0]

    def between() -> None:
        async def go() -> None:
            logging_quiet()
            store = await Store.open(load(daemon.config_path).storage)
            try:
                took[0] = await asyncio.wait_for(fill(store, PERSONAL_BOX, n), 1800)
            finally:
                await store.close()

        asyncio.run(go())

    daemon.restart(between)
    return took[0]


def fill_dovecot(ref: Reference, n: int) -> float:
    """Wipe the reference's mail (`dovecot-ref.sh reset`, which stops it), write `n`
    messages as files into testuser's Maildir (the same bench messages; odd ones in
    cur/ with `:2,S`, even ones in new/, mtime = internal date, S= size in the name),
    start it again; seconds the writing took. Dovecot indexes them at the first
    SELECT (timed separately)."""
    import grp
    import pwd

    ref.run("dovecot-ref.sh", "reset")
    home = DOVECOT_DIR / "home" / DOVECOT_USER[0]
    maildir = home / "Maildir"
    uid, gid = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    t0 = time.perf_counter()
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    base = 1_770_000_000
    for i in range(n):
        raw = bench_message(i, "testuser@localhost")
        name = f"{base + i}.M{i}P1.scale,S={len(raw)}"
        path = maildir / "cur" / f"{name}:2,S" if i % 2 else maildir / "new" / name
        path.write_bytes(raw)
        os.utime(path, (base + i, base + i))
        os.chown(path, uid, gid)
    for d in (home, maildir, maildir / "cur", maildir / "new", maildir / "tmp"):
        os.chown(d, uid, gid)
    took = time.perf_counter() - t0
    ref.run("dovecot-ref.sh", "start")
    return took


def dovecot_session_rss() -> float:
    """MiB: the RSS of the newest `imap` process of the reference (one per
    connection, so the session's own while it is the only one)."""
    master = (DOVECOT_DIR / "run" / "master.pid").read_text().strip()
    newest: tuple[int, int] | None = None
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if comm == "imap" and fields[1] == master:
            start = int(fields[19])
            if newest is None or start > newest[0]:
                newest = (start, int(d.name))
    return rss_kb(newest[1]) / 1024 if newest else 0.0


SCALE_ROWS = (
    # key, label, goal at 100,000 (issue 14)
    ("select_first", "first SELECT after start (cold), ms", ""),
    ("select", "SELECT INBOX, ms (median of 5)", "< 50"),
    ("fetch", "FETCH 1:* (UID FLAGS), ms (median of 5)", "< 400"),
    ("search", "UID SEARCH UNSEEN, ms (median of 5)", "< 10"),
    ("append_full", f"APPEND into the box, ms (median of {SCALE_ACCEPTS})", "± 10 %"),
    ("append_empty", f"APPEND into an empty folder, ms (median of {SCALE_ACCEPTS})", ""),
    ("smtp_full", f"SMTP 250 into the box, ms (median of {SCALE_ACCEPTS})", "± 10 %"),
    ("smtp_empty", f"SMTP 250 into an empty box, ms (median of {SCALE_ACCEPTS})", ""),
    ("rss_growth", "RSS growth after the first SELECT, MiB", ""),
    ("rss_end_growth", "RSS growth at the end of the run, MiB", ""),
)


def compare_scale(args: argparse.Namespace, ref: Reference) -> dict[str, float]:
    ref.start("dovecot-ref.sh")
    results: dict[str, float] = {}
    for n in (int(x) for x in args.sizes.split(",")):
        n = max(1, min(n, 200_000))
        print(f"\nINBOX of {n} messages (half \\Seen), load {loadavg()}", flush=True)
        with BenchDaemon(args.engine) as daemon:
            filled = fill_relay(daemon, n)
            print(f"  mss-relay {args.engine}: filled in {filled:.1f} s", flush=True)
            time.sleep(1.0)  # idle after the start
            idle = rss_kb(daemon.pid) / 1024
            ours = scale_measure(
                daemon.ports["imaps"], LOGIN, PASSWORD, n,
                lambda: rss_kb(daemon.pid) / 1024, PERSONAL_BOX,
            )  # fmt: skip
            ours["rss_idle"] = idle
            ours["smtp_full"], ours["smtp_empty"] = smtp_accept_times(daemon)
            print(f"  mss-relay measured (load {loadavg()})", flush=True)
        filled_ref = fill_dovecot(ref, n)
        print(f"  Dovecot: Maildir written in {filled_ref:.1f} s", flush=True)
        theirs = scale_measure(
            DOVECOT_IMAPS, *DOVECOT_USER, n, dovecot_session_rss, "testuser@localhost"
        )
        print(f"  Dovecot measured (load {loadavg()})", flush=True)
        for fig in (ours, theirs):
            fig["rss_growth"] = fig["rss_selected"] - fig["rss_idle"]
            fig["rss_end_growth"] = fig["rss_end"] - fig["rss_idle"]
        print(
            f"  checks: EXISTS {ours['exists']:.0f} / {theirs['exists']:.0f}, FETCH lines "
            f"{ours['fetch_lines']:.0f} / {theirs['fetch_lines']:.0f}, UNSEEN "
            f"{ours['unseen']:.0f} / {theirs['unseen']:.0f} (mss-relay / Dovecot)"
        )
        print(f"  {'':48} {'mss-relay':>10} {'Dovecot':>10} {'ratio':>7}  goal at 100k")
        for key, label, goal in SCALE_ROWS:
            a, b = ours.get(key), theirs.get(key)
            ratio = (
                f"{b / a:7.2f}" if a and b and key.startswith(("select", "fetch", "search",
                                                                "append")) else ""
            )  # fmt: skip
            sa = f"{a:10.1f}" if a is not None else f"{'-':>10}"
            sb = f"{b:10.1f}" if b is not None else f"{'-':>10}"
            print(f"  {label:48} {sa} {sb} {ratio:>7}  {goal}")
            if a and b and key in ("select", "fetch", "search"):
                results[f"{n} {key} (Dovecot time / mss-relay time)"] = b / a
        print(
            f"  mss-relay idle RSS {ours['rss_idle']:.0f} MiB (the daemon); Dovecot "
            f"{theirs['rss_idle']:.0f} MiB (the session's imap process, logged in)",
            flush=True,
        )
        if ours["smtp_empty"]:
            results[f"{n} smtp into the box / into an empty box"] = (
                ours["smtp_full"] / ours["smtp_empty"]
            )
        for name, fig in (("mss-relay", ours), ("Dovecot", theirs)):
            if fig["append_empty"]:
                results[f"{n} {name} APPEND into the box / into an empty folder"] = (
                    fig["append_full"] / fig["append_empty"]
                )
    ref.run("dovecot-ref.sh", "reset")
    ref.run("dovecot-ref.sh", "start")  # as it was found; stop_all stops it if we started it
    return results


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
    "scale": compare_scale,
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
    p.add_argument("--sizes", default="1000,10000,100000", help="scale: box sizes")
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
    if args.what == "scale":
        print("\nsummary (each ratio as named; Dovecot time / mss-relay time: above 1 is "
              "mss-relay ahead; into the box / into an empty one: 1.0 is flat)")  # fmt: skip
    else:
        print("\nsummary (median ratio, mss-relay / reference; above 1: mss-relay ahead)")
    for name, ratio in results.items():
        print(f"  {name}: {ratio:.2f}")


if __name__ == "__main__":
    main()
