"""Health: the four checks behind ``/healthz``, decided from facts. Pure.

The edge (`relay.web.server`) gathers the facts (a trivial read, the writer's state,
the CRLs in use, each listener's socket) and this module decides. A check that fails
names itself and says why, in words an admin can act on; the HTTP status is 200 when
every check passes and 503 otherwise (what load balancers and systemd-style probes
expect).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from relay.metrics import CrlFact

__all__ = [
    "WRITER_STUCK_SECONDS",
    "Check",
    "HealthFacts",
    "evaluate",
    "render",
]

# A group commit takes milliseconds (an fsync, or a PostgreSQL round trip); one still
# running after this long is a stuck disk or a lock held elsewhere: messages are not
# being acknowledged.
WRITER_STUCK_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Check:
    name: str  # store | writer | crl | listeners
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class HealthFacts:
    """What the edge read just now."""

    store_error: str | None  # None: the trivial read answered
    writer_alive: bool
    writer_busy_seconds: float | None  # the batch being committed; None: idle
    writer_waiting: int  # units waiting for the next batch
    crl_files: int  # configured CRL files; 0: revocation checking is off
    crls: Sequence[CrlFact]
    listeners: Sequence[tuple[str, bool]]  # (listener label, accepting connections)


def _store(f: HealthFacts) -> Check:
    if f.store_error is None:
        return Check("store", True, "the database answers")
    return Check("store", False, f"the database does not answer: {f.store_error}")


def _writer(f: HealthFacts) -> Check:
    if not f.writer_alive:
        return Check("writer", False, "the group-commit writer has stopped: nothing can be stored")
    busy = f.writer_busy_seconds
    if busy is not None and busy > WRITER_STUCK_SECONDS:
        return Check(
            "writer",
            False,
            f"one commit has been running for {busy:.0f} s ({f.writer_waiting} units waiting): "
            "the disk or the database is stuck",
        )
    return Check("writer", True, f"running, {f.writer_waiting} units waiting")


def _crl(f: HealthFacts) -> Check:
    if f.crl_files == 0:
        return Check("crl", True, "revocation checking is off (no [tls] crl_files)")
    if not f.crls:
        return Check(
            "crl",
            False,
            "no usable CRL: handshakes needing revocation data fail "
            "(see the tls.crl_rejected audit events)",
        )
    stale = [c.issuer for c in f.crls if c.stale]
    if stale:
        return Check(
            "crl",
            False,
            "CRL past nextUpdate + grace for " + "; ".join(stale) + ": TLS with certificates "
            "they issued fails closed until a fresh CRL is loaded",
        )
    return Check("crl", True, f"{len(f.crls)} CRL(s) fresh")


def _listeners(f: HealthFacts) -> Check:
    down = [name for name, up in f.listeners if not up]
    if down:
        return Check("listeners", False, "not accepting connections: " + ", ".join(down))
    return Check("listeners", True, f"{len(f.listeners)} accepting connections")


def evaluate(facts: HealthFacts) -> tuple[Check, ...]:
    """Every check, in a fixed order."""
    return (_store(facts), _writer(facts), _crl(facts), _listeners(facts))


def render(checks: Sequence[Check]) -> tuple[int, str]:
    """HTTP status and a plain-text body: first line ``ok`` or ``fail: NAMES``, then one
    line per check."""
    failing = [c.name for c in checks if not c.ok]
    head = "ok" if not failing else "fail: " + ", ".join(failing)
    lines = [head] + [f"{c.name}: {'ok' if c.ok else 'FAIL'}: {c.detail}" for c in checks]
    return (200 if not failing else 503), "\n".join(lines) + "\n"
