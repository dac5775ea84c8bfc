"""The daemon's own CPU per message (SMTP) or per command (IMAP), for A/B between trees.

    .venv/bin/python -m bench.cpu_probe smtp [--engine sqlite|postgresql] [--reuse]
        [--messages 2000] [--tree DIR ...] [--rounds 2] [--spy FILE]
    .venv/bin/python -m bench.cpu_probe imap [--engine E] [--secs 20] [--clients 10]
        [--tree DIR ...] [--rounds 2] [--spy FILE]

Throughput on this machine moves with whatever else it runs (bench/README.md gives
sittings where the references' own figures moved by a factor of 3). What moves much
less is the CPU time the daemon spends per unit of work, read from /proc. This probe
runs one load against one bench daemon (bench/daemon.py) per tree and round, and
prints for each: the rate, the daemon's CPU time (user + system) per message or
command, and each thread's share of a core (the event loop, the store's writer, the
executor's threads), by the thread names /proc/PID/task gives.

`--tree DIR` (repeatable) runs the daemon from DIR's `relay` package instead of this
checkout's (a `git worktree` of the base commit, say): the trees are run in turn,
`--rounds` times, so that a base and a change meet the same machine. `--spy FILE`
records the last round of the first tree with py-spy (raw format, threads named) and
prints the functions with the largest inclusive and own shares of the samples; with
`--gil`, only the samples of the thread holding the GIL: for a daemon bound by the GIL
(bench/README.md), the share of its real bottleneck each function takes.

SMTP: bench/smtp_client.py on the submission port without TLS (AUTH PLAIN, 10 KiB,
10 sessions), one connection per message unless `--reuse`; a warm-up of 200 messages
first. IMAP: imaptest stress (`--imaptest`, the team's run.sh) with sessions kept, a
5-second warm-up first. No reference is started: for ratios, see bench/compare.py.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.compare import DEFAULT_IMAPTEST, STRESS_LINE, empty_inbox, loadavg
from bench.daemon import LOGIN, PASSWORD, PERSONAL_BOX, SHARED_BOX, BenchDaemon
from bench.smtp_client import SmtpTarget, run_load

TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(path: Path) -> list[str]:
    text = path.read_text()
    return text[text.rindex(")") + 2 :].split()  # after "pid (comm) "


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the whole process (every thread), in seconds."""
    f = _stat_fields(Path(f"/proc/{pid}/stat"))
    return (int(f[11]) + int(f[12])) / TICKS


def thread_seconds(pid: int) -> dict[str, float]:
    """User + system CPU by thread: "loop" for the main thread (the event loop), the
    others by thread id (CPython does not name its threads for the kernel; a `--spy`
    record names them)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            f = _stat_fields(task / "stat")
        except OSError:
            continue  # the thread ended meanwhile
        name = "loop" if task.name == str(pid) else f"thread {task.name}"
        out[name] = (int(f[11]) + int(f[12])) / TICKS
    return out


@dataclass
class Sample:
    tree: str
    units: int  # messages or commands
    seconds: float  # wall
    cpu: float
    threads: dict[str, float]
    note: str

    def line(self, unit: str) -> str:
        rate = self.units / self.seconds if self.seconds else 0.0
        per = self.cpu / self.units * 1000 if self.units else 0.0
        shares = ", ".join(
            f"{name} {cpu / self.seconds * 100:.0f}%"
            for name, cpu in sorted(self.threads.items(), key=lambda kv: -kv[1])
            if cpu / self.seconds >= 0.01
        )
        return (
            f"{self.tree}: {rate:7.1f} {unit}/s, CPU {per:5.2f} ms/{unit}, "
            f"{self.cpu / self.seconds * 100:.0f}% of a core ({shares}); {self.note}"
        )


def measured(pid: int, tree: str, run: object) -> Sample:
    """Run `run()` (-> units, note) and read the daemon's CPU around it."""
    cpu0, thr0, t0 = cpu_seconds(pid), thread_seconds(pid), time.perf_counter()
    units, note = run()  # type: ignore[operator]
    seconds = time.perf_counter() - t0
    thr1 = thread_seconds(pid)
    threads = {k: v - thr0.get(k, 0.0) for k, v in thr1.items()}
    return Sample(tree, units, seconds, cpu_seconds(pid) - cpu0, threads, note)


def smtp_run(daemon: BenchDaemon, args: argparse.Namespace, messages: int) -> tuple[int, str]:
    target = SmtpTarget(
        "127.0.0.1", daemon.ports["plain"], False, daemon.ca, LOGIN, PASSWORD,
        PERSONAL_BOX, SHARED_BOX,
    )  # fmt: skip
    result = asyncio.run(
        run_load(
            target, messages=messages, size=10240, concurrency=10, reuse=args.reuse,
            max_seconds=300.0,
        )
    )  # fmt: skip
    note = f"{result.messages} messages"
    if result.errors:
        note += f", {len(result.errors)} errors: {result.errors[0][:120]}"
    return result.messages, note


def imap_run(daemon: BenchDaemon, args: argparse.Namespace, secs: int) -> tuple[int, str]:
    port = daemon.ports["imaps"]
    empty_inbox(port, LOGIN, PASSWORD)
    cmd = [
        args.imaptest, "stress", "--host", "127.0.0.1", "--port", str(port), "--ssl",
        "--user", LOGIN, "--pass", PASSWORD, "--clients", str(args.clients),
        "--secs", str(secs), "--profile", "session",
    ]  # fmt: skip
    with tempfile.TemporaryFile() as out:
        subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            timeout=secs + 600, check=False,
        )  # fmt: skip
        out.seek(0)
        text = out.read().decode(errors="replace")
    m = STRESS_LINE.search(text)
    if m is None:
        return 0, f"no imaptest summary: {text.strip()[-200:]!r}"
    return int(m.group(1)), f"{m.group(1)} commands, errors={m.group(4)}"


def spy_summary(raw: Path, top: int = 25) -> str:
    """The functions with the largest inclusive and own shares of py-spy's raw samples
    (lines "frame;frame;... count", outermost first)."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r" \(.*?:\d+\)$", "", f) for f in stack.split(";")]
        for f in set(frames):
            inclusive[f] += n
        if frames:
            own[frames[-1]] += n
    if not total:
        return "no samples"
    out = [f"{total} samples; inclusive:"]
    out += [f"  {n / total * 100:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    out.append("own:")
    out += [f"  {n / total * 100:5.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=("smtp", "imap"))
    p.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--tree", action="append", default=[], help="run the daemon from DIR")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--messages", type=int, default=2000, help="smtp: messages per round")
    p.add_argument("--reuse", action="store_true", help="smtp: one connection per session")
    p.add_argument("--secs", type=int, default=20, help="imap: seconds of stress per round")
    p.add_argument("--clients", type=int, default=10, help="imap: imaptest clients")
    p.add_argument("--imaptest", default=DEFAULT_IMAPTEST)
    p.add_argument("--spy", type=Path, help="py-spy raw output for the first tree's last round")
    p.add_argument(
        "--gil",
        action="store_true",
        help="with --spy: only the samples of threads holding the GIL (py-spy --gil)",
    )
    args = p.parse_args()
    args.rounds = max(1, min(args.rounds, 10))
    args.messages = max(100, min(args.messages, 50_000))
    args.secs = max(5, min(args.secs, 300))
    trees: list[Path | None] = [Path(t).resolve() for t in args.tree] or [None]
    # py-spy is not a dependency: beside this interpreter (pip install py-spy) or on PATH
    beside = Path(sys.executable).parent
    py_spy = shutil.which("py-spy", path=f"{beside}{os.pathsep}{os.environ.get('PATH', '')}")
    if args.spy and py_spy is None:
        sys.exit("--spy needs py-spy: .venv/bin/pip install py-spy")
    unit = "msg" if args.what == "smtp" else "cmd"
    print(
        f"bench.cpu_probe {args.what}, engine {args.engine}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load {loadavg()}, {os.cpu_count()} cores",
        flush=True,
    )
    for r in range(args.rounds):
        for i, tree in enumerate(trees):
            env = {"PYTHONSAFEPATH": "1", "PYTHONPATH": str(tree)} if tree else {}
            name = str(tree) if tree else "this checkout"
            with BenchDaemon(args.engine, extra_env=env) as daemon:
                if args.what == "smtp":
                    smtp_run(daemon, args, 200)

                    def run(d: BenchDaemon = daemon) -> tuple[int, str]:
                        return smtp_run(d, args, args.messages)
                else:
                    imap_run(daemon, args, 5)

                    def run(d: BenchDaemon = daemon) -> tuple[int, str]:
                        return imap_run(d, args, args.secs)

                spy = None
                if args.spy and i == 0 and r == args.rounds - 1:
                    spy = subprocess.Popen(
                        [str(py_spy), "record", "-p", str(daemon.pid), "-r", "100", "-f", "raw",
                         "--threads", "--nonblocking", "-o", str(args.spy)]
                        + (["--gil"] if args.gil else []),
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                sample = measured(daemon.pid, name, run)
                if spy is not None:
                    spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                    spy.wait(timeout=60)
            print(f"round {r + 1} {sample.line(unit)} (load {loadavg()})", flush=True)
    if args.spy and args.spy.exists():
        print(spy_summary(args.spy))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
