"""Logins per second through the authenticator that IMAP and SMTP call: access tokens
(RS256 JWT, the issuer's JWKS cached) next to argon2id passwords, in the same run.

No network: this is the cost of checking a credential, what a login adds on top of
the TLS handshake. The password figure is uncached (each login verifies argon2id, as
the first login of a client does); the token figure is after the first login loaded
the JWKS (`fetches` stays 1).

    python -m bench.auth_logins --tokens 2000 --passwords 40 --concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from relay.config.loader import load_text
from relay.config.model import Config
from relay.identity.auth import Authenticator
from relay.identity.devissuer import mint_dev_token, write_dev_issuer
from relay.identity.issuer import IssuerKeys
from relay.identity.passwords import hash_password

PASSWORD = "bench-password-1"


def _config(directory: Path) -> Config:
    key, jwks = write_dev_issuer(directory)
    text = f"""
[server]
hostname = "localhost"
data_dir = "{directory}"
[[people]]
id = "martin"
rpps = "10001234567"
password_hash = "{hash_password(PASSWORD)}"
[issuer]
issuer = "https://issuer.bench.invalid/realms/bench"
client_id = "bench"
jwks_file = "{jwks}"
dev_signing_key = "{key}"
"""
    return load_text(text, directory / "relay.toml")


async def _timed(
    n: int, concurrency: int, login: Callable[[], Awaitable[None]]
) -> tuple[float, list[float]]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one() -> None:
        async with gate:
            t = time.perf_counter()
            await login()
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - started, latencies


def _line(name: str, n: int, elapsed: float, latencies: list[float]) -> float:
    rate = n / elapsed
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    print(
        f"{name:<44} {rate:9.1f} logins/s  p50 {q[49] * 1000:7.2f} ms  p99 {q[98] * 1000:7.2f} ms"
        f"  ({n} logins)"
    )
    return rate


async def run(tokens: int, passwords: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(Path(tmp))
        keys = IssuerKeys(lambda: config.issuer)
        auth = Authenticator(lambda: config, tokens=keys)
        token = mint_dev_token(config, "martin", lifetime_seconds=3600)
        await auth.token(token=token, authzid=None, peer="127.0.0.1")  # loads the JWKS

        async def token_login() -> None:
            await auth.token(token=token, authzid=None, peer="127.0.0.1")

        async def password_login() -> None:
            # a fresh authenticator: argon2id is verified, not served from its cache
            fresh = Authenticator(lambda: config)
            await fresh.password(login="martin", password=PASSWORD, authzid=None, peer="127.0.0.1")

        elapsed, lat = await _timed(tokens, concurrency, token_login)
        token_rate = _line("token (RS256 JWT, JWKS cached)", tokens, elapsed, lat)
        elapsed, lat = await _timed(passwords, concurrency, password_login)
        password_rate = _line("password (argon2id m=64 MiB t=3 p=4)", passwords, elapsed, lat)
        print(f"JWKS loads during the run: {keys.fetches}")
        print(f"ratio token/password: {token_rate / password_rate:.0f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokens", type=int, default=2000)
    p.add_argument("--passwords", type=int, default=40)
    p.add_argument("--concurrency", type=int, default=4)
    args = p.parse_args()
    if not (0 < args.tokens <= 100_000 and 0 < args.passwords <= 10_000):
        p.error("--tokens 1..100000, --passwords 1..10000")
    asyncio.run(run(args.tokens, args.passwords, args.concurrency))


if __name__ == "__main__":
    main()
