"""Daemon memory with many idle IMAP connections over TLS (issue 9, item 5: slowloris).

Starts `mss-relay serve` as a separate process (its own config in a temporary folder,
IMAP over implicit TLS on 127.0.0.1), measures its resident memory (VmRSS and PSS),
opens --connections TLS connections spread over --sources loopback addresses
(127.0.0.1, 127.0.0.2, ...), optionally logs each in (--login), leaves them idle, and
measures again. It prints how many connections got the greeting and how many the
`* BYE` of a cap, and the memory per connection kept. Bounded: --connections in total
and --max-seconds. It asserts nothing.

    .venv/bin/python -m bench.imap_idle_rss --connections 500 --sources 1
    .venv/bin/python -m bench.imap_idle_rss --connections 500 --sources 10
    .venv/bin/python -m bench.imap_idle_rss --connections 500 --sources 10 --reference

`--code DIR` runs the daemon from another checkout (e.g. the commit before the fix:
`git worktree add /tmp/before 0809659`), so "before" and "after" come from one sitting.
`--limits TEXT` adds lines to the [limits] table (the old code knows fewer keys).
`--reference` also measures Debian's Dovecot (/work/shared/reference/dovecot-ref.sh,
under `flock /work/team/reference.lock`), summing the PSS of its processes: Dovecot
runs a process per connection, so PSS (shared pages divided among sharers) is the fair
sum; logged in (Dovecot's imap-login limits unauthenticated connections to 100
processes by default).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOVECOT = Path("/work/shared/reference/dovecot-ref.sh")
PASSWORD = "bench-password-1"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_config(folder: Path, port: int, limits: str) -> Path:
    from relay.identity.passwords import hash_password
    from relay.tls.pki import generate_dev_pki

    pki = generate_dev_pki(folder / "pki", "localhost")
    text = f"""
[server]
hostname = "localhost"
data_dir = "{folder}/data"

[storage]
url = "sqlite+aiosqlite:///{folder}/relay.db"
key_file = "{folder}/blob.key"

[tls]
certificate = "{pki.server_cert}"
key = "{pki.server_key}"
trust_anchors = ["{pki.ca_bundle}"]
crl_files = ["{pki.crl}"]

[[listeners]]
kind = "imap"
address = "127.0.0.1:{port}"
tls = "implicit"

[[people]]
id = "martin"
display_name = "Dr Bench"
rpps = "10001234567"
password_hash = "{hash_password(PASSWORD)}"

[[mailboxes]]
address = "martin@bench.mssante.fr"
type = "PER"
owner = "martin"

[limits]
{limits}
"""
    path = folder / "relay.toml"
    path.write_text(text)
    return path


def memory_kb(pids: list[int]) -> tuple[int, int]:
    """(sum of VmRSS, sum of PSS) in kB over `pids` (processes that vanished count 0)."""
    rss = pss = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return rss, pss


async def hold(
    port: int,
    connections: int,
    sources: int,
    login: tuple[str, str] | None,
    ctx: ssl.SSLContext,
    deadline: float,
) -> tuple[list[asyncio.StreamWriter], int, int, set[bytes]]:
    """Open connections (20 at a time); keep those greeted with OK (and logged in)."""
    kept: list[asyncio.StreamWriter] = []
    refused = failed = 0
    byes: set[bytes] = set()
    semaphore = asyncio.Semaphore(20)

    async def one(n: int) -> None:
        nonlocal refused, failed
        if time.monotonic() > deadline:
            return
        source = f"127.0.0.{1 + n % sources}"
        async with semaphore:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        "127.0.0.1",
                        port,
                        ssl=ctx,
                        server_hostname="localhost",
                        local_addr=(source, 0),
                    ),
                    30,
                )
                greeting = await asyncio.wait_for(reader.readline(), 30)
                if not greeting.startswith(b"* OK"):
                    refused += 1
                    byes.add(greeting.strip())
                    writer.close()
                    return
                if login is not None:
                    writer.write(f"a LOGIN {login[0]} {login[1]}\r\n".encode())
                    while not (answer := await asyncio.wait_for(reader.readline(), 30)).startswith(
                        b"a "
                    ):
                        pass
                    if not answer.startswith(b"a OK"):
                        failed += 1
                        writer.close()
                        return
                kept.append(writer)
            except (OSError, TimeoutError, ssl.SSLError):
                failed += 1

    await asyncio.gather(*(one(n) for n in range(connections)))
    return kept, refused, failed, byes


async def measure(
    label: str,
    pids: Callable[[], list[int]],
    port: int,
    args: argparse.Namespace,
    ctx: ssl.SSLContext,
    login: tuple[str, str] | None,
) -> float:
    """Print the figures; return the PSS per connection kept (kB)."""
    await asyncio.sleep(1.0)
    rss0, pss0 = memory_kb(pids())
    deadline = time.monotonic() + args.max_seconds
    started = time.perf_counter()
    kept, refused, failed, byes = await hold(
        port, args.connections, args.sources, login, ctx, deadline
    )
    elapsed = time.perf_counter() - started
    await asyncio.sleep(2.0)  # let the server settle
    rss1, pss1 = memory_kb(pids())
    per = (pss1 - pss0) / len(kept) if kept else 0.0
    print(
        f"{label}: {len(kept)} of {args.connections} connections kept idle "
        f"({'logged in' if login else 'not logged in'}) from {args.sources} address(es) "
        f"in {elapsed:.1f} s; {refused} refused with BYE, {failed} failed"
    )
    for bye in sorted(byes):
        print(f"    refusal: {bye.decode(errors='replace')}")
    print(
        f"{label}: RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB, PSS {pss0 / 1024:.1f} -> "
        f"{pss1 / 1024:.1f} MiB: {per:.0f} kB PSS per idle connection kept"
    )
    for writer in kept:
        writer.close()
    return per


def relay_daemon(args: argparse.Namespace, folder: Path) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    config = write_config(folder, port, args.limits.replace("\\n", "\n"))
    env = dict(os.environ)
    code = Path(args.code).resolve() if args.code else REPO
    env["PYTHONPATH"] = str(code)
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=code,
        env=env,
    )
    assert proc.stdout is not None
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if "mss-relay: ready" in proc.stdout.readline():
            return proc, port
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit("the daemon did not start")


def dovecot_pids() -> list[int]:
    """Dovecot's master (its pid file) and every process below it."""
    ref = Path(os.environ.get("REF_DIR", "/tmp/dovecot-ref"))
    try:
        master = int((ref / "run" / "master.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    pids, todo = [], [master]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in children.read_text().split())
    return pids


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="imap-idle-rss-") as tmp:
        folder = Path(tmp)
        proc, port = relay_daemon(args, folder)
        try:
            ctx = ssl.create_default_context(cafile=str(folder / "pki" / "ca-bundle.pem"))
            login = ("martin", PASSWORD) if args.login else None
            where = f"code {args.code}" if args.code else "this checkout"
            ours = await measure(f"mss-relay ({where})", lambda: [proc.pid], port, args, ctx, login)
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
            proc.kill()
    if args.reference:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        # Not captured: Dovecot's processes inherit (and keep open) any pipe given here.
        null = subprocess.DEVNULL
        subprocess.run([str(DOVECOT), "start"], check=True, stdout=null, stderr=null)
        try:
            theirs = await measure(
                "dovecot 2.3", dovecot_pids, 10993, args, ctx, ("testuser", "testpass")
            )
            if ours and theirs:
                print(f"PSS per idle connection, dovecot / mss-relay: {theirs / ours:.1f}")
        finally:
            subprocess.run([str(DOVECOT), "stop"], check=False, stdout=null, stderr=null)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--connections", type=int, default=500)
    p.add_argument("--sources", type=int, default=1, help="loopback source addresses")
    p.add_argument("--login", action="store_true", help="log each connection in")
    p.add_argument("--limits", default="", help="lines for [limits] (\\n between lines)")
    p.add_argument("--code", help="checkout to run the daemon from (default: this one)")
    p.add_argument("--reference", action="store_true", help="also Dovecot (logged in)")
    p.add_argument("--max-seconds", type=float, default=300.0)
    args = p.parse_args()
    if args.reference and not os.environ.get("BENCH_REFERENCE_LOCKED"):
        # Dovecot uses fixed ports: take the team's lock around the whole run.
        os.environ["BENCH_REFERENCE_LOCKED"] = "1"
        cmd = ["flock", "/work/team/reference.lock", sys.executable, "-m", "bench.imap_idle_rss"]
        raise SystemExit(subprocess.call([*cmd, *sys.argv[1:]], cwd=REPO))
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
