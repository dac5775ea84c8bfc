"""Authentication shared by SMTP and IMAP: who is this person, and as which box?

Passwords are argon2id hashes from the config, verified in a worker thread (an argon2
check costs tens of milliseconds: on the event loop it would stall every session).
Repeated failures, counted per peer address and per login, are slowed down and then
refused for a while (`Limits.auth_failures_before_lockout`, `auth_lockout_seconds`).

Delegated access (DESIGN.md): a person may authorise as a box they co-hold, with a
SASL authorization identity (RFC 4616) or with the login form `person*box`. The
principal always names the person, so every trace leads to them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from relay.config.model import Config, Person, Right
from relay.errors import AuthenticationFailed, PermissionDenied, TemporarilyLocked
from relay.identity.passwords import verify_password

# Slow-down after the n-th consecutive failure: min(BASE * 2**(n-1), CAP) seconds.
FAILURE_DELAY_BASE_SECONDS = 0.1
FAILURE_DELAY_CAP_SECONDS = 2.0
# A successful password check is remembered (as a keyed hash, never the password)
# so a client that logs in again and again does not pay argon2 each time.
VERIFIED_CACHE_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated person, possibly acting as a box (authorization identity)."""

    person: Person
    mechanism: str
    as_box: str | None = None  # the box authorised as (authzid or person*box)

    @property
    def person_id(self) -> str:
        return self.person.id


@dataclass(slots=True)
class _Failures:
    count: int = 0
    last: float = 0.0
    locked_until: float = 0.0


def split_login(login: str) -> tuple[str, str | None]:
    """`person*box` → ("person", "box"); a plain login → (login, None)."""
    if "*" in login:
        person, _, box = login.partition("*")
        return person, box.lower() or None
    return login, None


class Authenticator:
    """Checks credentials against the current config, with throttling."""

    def __init__(
        self,
        config: Callable[[], Config],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        today: Callable[[], dt.date] = lambda: dt.datetime.now().astimezone().date(),
    ) -> None:
        self._config = config
        self._now = monotonic
        self._today = today
        self._by_peer: dict[str, _Failures] = {}
        self._by_login: dict[str, _Failures] = {}
        self._cache_key = secrets.token_bytes(32)
        self._verified: dict[bytes, float] = {}

    # --- throttling ---------------------------------------------------------------

    def check_not_locked(self, peer: str, login: str | None) -> None:
        now = self._now()
        for table, key in ((self._by_peer, peer), (self._by_login, login)):
            if key is None:
                continue
            entry = table.get(key)
            if entry is not None and entry.locked_until > now:
                raise TemporarilyLocked(
                    "Too many authentication failures, try again later",
                    log_detail=f"locked: {key}",
                )

    def record_failure(self, peer: str, login: str | None) -> float:
        """Count a failure; return how long to wait before answering."""
        limits = self._config().limits
        now = self._now()
        delay = 0.0
        for table, key in ((self._by_peer, peer), (self._by_login, login)):
            if key is None:
                continue
            entry = table.setdefault(key, _Failures())
            if now - entry.last > limits.auth_lockout_seconds:
                entry.count = 0
            entry.count += 1
            entry.last = now
            if entry.count >= limits.auth_failures_before_lockout:
                entry.locked_until = now + limits.auth_lockout_seconds
            delay = max(
                delay,
                min(FAILURE_DELAY_BASE_SECONDS * 2 ** (entry.count - 1), FAILURE_DELAY_CAP_SECONDS),
            )
        return delay

    def record_success(self, peer: str, login: str) -> None:
        self._by_login.pop(login, None)
        entry = self._by_peer.get(peer)
        if entry is not None and entry.locked_until <= self._now():
            self._by_peer.pop(peer, None)

    # --- checks -------------------------------------------------------------------

    async def password(
        self, *, login: str, password: str, authzid: str | None, peer: str
    ) -> Principal:
        """Verify a login and password; returns the principal or raises.

        Raises TemporarilyLocked while the peer or login is locked out (even with the
        right password), AuthenticationFailed after the slow-down otherwise.
        """
        person_login, star_box = split_login(login)
        self.check_not_locked(peer, person_login)
        config = self._config()
        person = config.person_by_login(person_login)
        ok = False
        if person is not None and person.password_hash:
            ok = await self._verify(person, password)
        if not ok or person is None:
            await asyncio.sleep(self.record_failure(peer, person_login))
            raise AuthenticationFailed(
                "Authentication failed",
                log_detail="unknown login" if person is None else "bad password",
            )
        if authzid == login:
            authzid = None  # mbsync sends its login (`person*box`) as the authzid too
        box = authzid or star_box
        principal = self.authorize(person, "PASSWORD", box)
        self.record_success(peer, person_login)
        return principal

    def certificate(self, fingerprint: str, authzid: str | None) -> Principal:
        """SASL EXTERNAL: the client certificate's SHA-256 names the person."""
        config = self._config()
        fingerprint = fingerprint.lower().replace(":", "")
        for person in config.people:
            if fingerprint in person.certificate_fingerprints:
                return self.authorize(person, "EXTERNAL", authzid)
        raise AuthenticationFailed(
            "Client certificate not linked to any person",
            log_detail=f"unknown fingerprint {fingerprint}",
        )

    def authorize(self, person: Person, mechanism: str, authzid: str | None) -> Principal:
        """Check that `person` may act as `authzid` (a box they co-hold, or themselves)."""
        if authzid in (None, "", person.login, person.id):
            return Principal(person, mechanism)
        assert authzid is not None
        box = self._config().mailbox(authzid)
        if box is None:
            raise PermissionDenied(
                f"{authzid} is not a mailbox of this server",
                smtp="535 5.7.8 Authorization identity is not a mailbox here",
            )
        rights = box.rights_of(person.id, self._today())
        if not rights & {Right.READ, Right.SEND}:
            raise PermissionDenied(
                f"{person.id} does not co-hold {box.address} today",
                smtp=f"535 5.7.8 {person.login} may not act as {box.address}",
            )
        return Principal(person, mechanism, as_box=box.address)

    async def _verify(self, person: Person, password: str) -> bool:
        assert person.password_hash is not None
        key = hmac.new(
            self._cache_key,
            f"{person.id}\0{person.password_hash}\0{password}".encode(),
            hashlib.sha256,
        ).digest()
        now = self._now()
        expires = self._verified.get(key)
        if expires is not None and expires > now:
            return True
        ok = await asyncio.to_thread(verify_password, person.password_hash, password)
        if ok:
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[key] = now + VERIFIED_CACHE_SECONDS
        return ok
