"""SMTP protocol fuzzer: random sessions against the real daemon, real sockets, real TLS.

Each session opens one of the SMTP listeners, may begin in a known state (EHLO, then
a STARTTLS upgrade and a second STARTTLS inside TLS, or STARTTLS with commands
pipelined after it), then sends random steps: commands from the grammar and outside
it, pipelined groups, message bodies (bare LF, dot lines, long lines), garbage bytes,
AUTH exchanges, STARTTLS anywhere. It ends with a probe that any state must answer
(CRLF "." CRLF ends a DATA or an AUTH exchange, NOOP, QUIT).

Whatever was sent, the server must:
- never hang: close the connection within PROBE_SECONDS of the probe;
- answer in well-formed replies, printable ASCII, never an exception's reply (451
  "Local error", aiosmtpd's "500 Error: (...)");
- refuse a second STARTTLS inside TLS with 503 5.5.1 and commands pipelined after
  STARTTLS with 554 5.5.1 and a close, at once (both counted: the run must reach
  them);
- hold no session afterwards, and still serve a normal client.

Bounded: SESSIONS sessions, DEADLINE_SECONDS in all. Seeded (FUZZ_SEED, printed on
failure) so a failure can be replayed.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import ssl
import time
from dataclasses import dataclass, field

import pytest

from relay.smtp.listener import SmtpListener
from tests.harness import MARTIN_BOX, PEER_DOMAIN, SHARED, RunningDaemon
from tests.smtp import wire
from tests.smtp.test_inbound import relay_as

SESSIONS = 150
CONCURRENCY = 8
DEADLINE_SECONDS = 480.0
PROBE_SECONDS = 30.0  # generous for a loaded machine; a stall was 60 to 300 s
QUIET_SECONDS = 0.15  # how long to read replies after each step
SEED = int(os.environ.get("FUZZ_SEED", "20261201"))

REPLY_LINE = re.compile(rb"^[2-5][0-9]{2}[ -][\x20-\x7e]*$|^[2-5][0-9]{2}$")
TLS_ALREADY = b"503 5.5.1 TLS is already active"
PIPELINED_REFUSED = b"554 5.5.1 Commands sent after STARTTLS"
EXCEPTION_REPLIES = (b"451 4.3.0 Local error", b"500 Error: (")

ADDRESSES = [
    MARTIN_BOX,
    SHARED,
    f"dr.x@{PEER_DOMAIN}",
    "279035121518989@patient.mssante.fr",
    "279035121518988@patient.mssante.fr",
    "",
    "<>",
    "a" * 300 + "@x.fr",
    "dossier-é@cpts-demo.mssante.fr",
    "no-at-sign",
    '"quoted local"@cpts-demo.mssante.fr',
]


@dataclass
class Outcome:
    sent: list[bytes] = field(default_factory=list)
    received: bytearray = field(default_factory=bytearray)
    hung: bool = False
    problems: list[str] = field(default_factory=list)
    reached_second_starttls: bool = False
    reached_pipelined_refusal: bool = False


def random_command(rng: random.Random) -> bytes:
    addr = rng.choice(ADDRESSES)
    choices: list[bytes] = [
        b"EHLO fuzz.example",
        b"HELO fuzz.example",
        b"EHLO",
        f"MAIL FROM:<{addr}>".encode(),
        f"MAIL FROM:<{addr}> SIZE={rng.randint(0, 1 << 30)} BODY=8BITMIME SMTPUTF8".encode(),
        f"RCPT TO:<{addr}>".encode(),
        f"RCPT TO:{addr}".encode(),
        b"DATA",
        b"DATA now",
        b"BDAT 10 LAST",
        b"RSET",
        b"NOOP",
        b"VRFY martin",
        b"EXPN list",
        b"HELP",
        b"STARTTLS",
        b"STARTTLS extra",
        b"AUTH",
        b"AUTH password",
        b"AUTH external",
        b"AUTH PLAIN",
        b"AUTH LOGIN",
        b"AUTH EXTERNAL =",
        b"AUTH PLAIN " + wire.plain_auth("martin", "wrong")[11:-2],
        b"AUTH PLAIN not-base64!",
        b"AUTH OAUTHBEARER bm90IGEgdG9rZW4=",
        b"AUTH " + bytes(rng.randrange(33, 127) for _ in range(rng.randint(1, 30))),
        bytes(rng.randrange(0, 256) for _ in range(rng.randint(1, 60))).replace(b"\n", b""),
        b"X" * rng.choice([600, 1100, 13_000]),
        b"",
        b"\x00\x00NOOP",
        b"QUIT now",
    ]
    return rng.choice(choices)


def random_body(rng: random.Random) -> bytes:
    lines = [b"Subject: fuzz", b""]
    for _ in range(rng.randint(0, 30)):
        lines.append(
            rng.choice(
                [
                    b"une ligne ordinaire",
                    b".ligne avec un point",
                    b"..",
                    b"bare\nLF",
                    b"bare\rCR",
                    b"\xff\xfe non UTF-8",
                    b"y" * rng.choice([900, 1200]),
                    b"QUIT",
                ]
            )
        )
    return b"\r\n".join(lines) + rng.choice([b"\r\n.\r\n", b"\n.\r\n", b"\r\n", b""])


def random_step(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.45:
        return random_command(rng) + rng.choice([b"\r\n"] * 8 + [b"\n", b"\r", b""])
    if kind < 0.75:  # a pipelined group
        return b"".join(random_command(rng) + b"\r\n" for _ in range(rng.randint(2, 8)))
    if kind < 0.9:
        return b"DATA\r\n" + random_body(rng)
    if kind < 0.95:
        return b"STARTTLS\r\n" + random_command(rng) + b"\r\n"
    return bytes(rng.randrange(0, 256) for _ in range(rng.randint(1, 2000)))


async def read_quietly(reader: asyncio.StreamReader, out: Outcome, quiet: float) -> bool:
    """Collect what the server sends until it is quiet for `quiet` s; False if closed."""
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), quiet)
        except TimeoutError:
            return True
        except (ConnectionError, ssl.SSLError):
            return False
        if not chunk:
            return False
        out.received += chunk


async def read_until(reader: asyncio.StreamReader, out: Outcome, marker: bytes) -> bool:
    deadline = time.monotonic() + PROBE_SECONDS
    while marker not in out.received:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            chunk = await asyncio.wait_for(reader.read(65536), remaining)
        except (TimeoutError, ConnectionError, ssl.SSLError):
            return False
        if not chunk:
            return False
        out.received += chunk
    return True


async def session(d: RunningDaemon, rng: random.Random) -> Outcome:
    out = Outcome()
    listener = rng.choice(["submission", "submission", "submission-tls", "inbound"])
    implicit = listener == "submission-tls"
    cert = "peer" if listener == "inbound" else rng.choice([None, None, "person-martin"])
    ctx = d.client_context(cert=cert)
    reader, writer = await wire.connect(d.ports[listener], tls=ctx if implicit else None)
    open_ = True

    async def send(data: bytes) -> None:
        out.sent.append(data)
        writer.write(data)
        await writer.drain()

    try:
        # A prologue in a known state, so that the two STARTTLS rules can be checked.
        prologue = rng.random()
        await send(b"EHLO fuzz.example\r\n")
        await read_until(reader, out, b"250 ")
        if not implicit and prologue < 0.35:
            await send(b"STARTTLS\r\n")
            if not await read_until(reader, out, b"220 "):
                out.problems.append("no 220 to STARTTLS")
                return out
            await writer.start_tls(ctx, server_hostname="localhost")
            await send(b"EHLO fuzz.example\r\nSTARTTLS\r\n")
            if await read_until(reader, out, TLS_ALREADY):
                out.reached_second_starttls = True
            else:
                out.problems.append("second STARTTLS inside TLS not refused with 503 5.5.1")
        elif implicit and prologue < 0.35:
            await send(b"STARTTLS\r\n")
            if await read_until(reader, out, TLS_ALREADY):
                out.reached_second_starttls = True
            else:
                out.problems.append("STARTTLS on implicit TLS not refused with 503 5.5.1")
        elif not implicit and prologue < 0.6:
            await send(b"STARTTLS\r\n" + (random_step(rng) or b"NOOP\r\n"))
            started = time.monotonic()
            refused = await read_until(reader, out, PIPELINED_REFUSED)
            closed = not await read_quietly(reader, out, PROBE_SECONDS)
            if refused and closed and time.monotonic() - started < PROBE_SECONDS:
                out.reached_pipelined_refusal = True
            else:
                out.problems.append(f"pipelined STARTTLS: refused={refused} closed={closed}")
            return out
        for _ in range(rng.randint(1, 10)):
            await send(random_step(rng))
            if not await read_quietly(reader, out, QUIET_SECONDS):
                open_ = False
                break
        if open_:
            await send(b"\r\n.\r\nNOOP\r\nQUIT\r\n")
            out.hung = await read_quietly(reader, out, PROBE_SECONDS)
    except (ConnectionError, ssl.SSLError):
        pass  # the server may close at any point: that is an answer
    finally:
        await wire.close(writer)
    return out


def check(out: Outcome) -> list[str]:
    problems = list(out.problems)
    if out.hung:
        problems.append(f"no close within {PROBE_SECONDS} s of the probe")
    text = bytes(out.received)
    lines = text.split(b"\r\n")
    if lines and lines[-1]:
        problems.append(f"reply cut mid-line: {lines[-1][:80]!r}")
    for line in lines[:-1]:
        if not REPLY_LINE.match(line):
            problems.append(f"malformed reply line {line[:100]!r}")
        if line.startswith(EXCEPTION_REPLIES):
            problems.append(f"exception reply {line[:100]!r}")
    return problems


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_fuzzed_sessions_never_hang_and_reach_both_starttls_rules(
    daemon: RunningDaemon,
) -> None:
    await daemon.trust_peer()
    rng = random.Random(SEED)
    seeds = [rng.randrange(1 << 32) for _ in range(SESSIONS)]
    outcomes: dict[int, Outcome] = {}
    deadline = time.monotonic() + DEADLINE_SECONDS
    queue = iter(seeds)

    async def worker() -> None:
        for seed in queue:
            assert time.monotonic() < deadline, "fuzz run over its time bound"
            outcomes[seed] = await session(daemon, random.Random(seed))

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    failures = {seed: check(o) for seed, o in outcomes.items() if check(o)}
    assert not failures, f"FUZZ_SEED={SEED}: {len(failures)} sessions failed; first: " + "; ".join(
        f"session seed {s}: {p[:3]} after {outcomes[s].sent[-3:]!r}"[:1500]
        for s, p in list(failures.items())[:2]
    )
    hangs = sum(o.hung for o in outcomes.values())
    assert hangs == 0
    assert sum(o.reached_second_starttls for o in outcomes.values()) >= 5
    assert sum(o.reached_pipelined_refusal for o in outcomes.values()) >= 5
    # nothing held, and a normal client is still served
    for _ in range(600):
        listeners = [x for x in daemon.daemon.listeners if isinstance(x, SmtpListener)]
        if all(x.open_sessions == 0 for x in listeners):
            break
        await asyncio.sleep(0.05)
    assert all(x.open_sessions == 0 for x in listeners)

    # Through the inbound relay: the fuzzer's wrong passwords have locked 127.0.0.1
    # out of AUTH for a while (that lockout is another item of issue 9).
    replies = await asyncio.to_thread(relay_as, daemon, "peer", f"dr.x@{PEER_DOMAIN}", SHARED)
    assert [code for code, _ in replies] == [250, 250, 250]
