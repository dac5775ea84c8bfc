"""Authentication shared by SMTP and IMAP: who is this person, and as which box?

Passwords are argon2id hashes from the config, verified in a worker thread (an argon2
check costs tens of milliseconds: on the event loop it would stall every session).
Repeated failures are throttled by `relay.identity.throttle`: per (address, login) and
per address they lead to a refusal *from that address* for a while, per login to
slower answers; the right password from an address that has not failed is never
refused (`Limits.auth_failures_before_lockout`, `auth_address_failures_before_lockout`,
`auth_lockout_seconds`).

Delegated access (DESIGN.md): a person may authorise as a box they co-hold, with a
SASL authorization identity (RFC 4616) or with the login form `person*box`. The
principal always names the person, so every trace leads to them.

Access tokens (OAUTHBEARER, XOAUTH2) are verified by a `TokenVerifier`
(`relay.identity.issuer`); the claim the issuer names the person by is matched to
`people[].rpps` (or `national_id`). A failed token goes through the same throttle as
a failed password.

Login methods (`auth.methods` of a person and of a box): a method the person or the
box does not accept is refused *before* the credential is checked (no oracle for
password guessing) with a reply naming the methods that are accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from relay.config.model import AuthMethod, Config, Mailbox, Person, Right
from relay.errors import (
    AuthenticationFailed,
    MethodNotAllowed,
    PermissionDenied,
    TemporarilyLocked,
    TokenRejected,
)
from relay.identity import tokens
from relay.identity.passwords import verify_password
from relay.identity.throttle import Decision, Throttle, ThrottlePolicy, Verdict

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

    @property
    def method(self) -> AuthMethod:
        """How the person proved who they are (checked against `auth.methods`)."""
        return MECHANISM_METHODS[self.mechanism]


# Principal.mechanism → the method it proves. PLAIN and LOGIN are both "PASSWORD".
MECHANISM_METHODS: dict[str, AuthMethod] = {
    "PASSWORD": AuthMethod.PASSWORD,
    "EXTERNAL": AuthMethod.CERTIFICATE,
    "TOKEN": AuthMethod.TOKEN,
}


class TokenVerifier(Protocol):
    """Verifies an access token against the issuer (`relay.identity.issuer`)."""

    async def verify(self, token: str) -> dict[str, Any]: ...


def method_allowed(box: Mailbox, method: AuthMethod) -> bool:
    """Whether a session logged in with `method` may reach `box` at all."""
    return method in box.auth_methods


def _listing(methods: frozenset[AuthMethod]) -> str:
    return " or ".join(m.value for m in AuthMethod if m in methods)


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
        tokens: TokenVerifier | None = None,
    ) -> None:
        self._config = config
        self._tokens = tokens
        self._now = monotonic
        self._today = today
        self._throttle = Throttle(self._policy())
        # Attempts on a login under attack from addresses that have failed: one at a time.
        self._login_locks: dict[str, asyncio.Lock] = {}
        self._cache_key = secrets.token_bytes(32)
        self._verified: dict[bytes, float] = {}

    # --- throttling ---------------------------------------------------------------

    def _policy(self) -> ThrottlePolicy:
        limits = self._config().limits
        return ThrottlePolicy(
            pair_failures_before_lockout=limits.auth_failures_before_lockout,
            address_failures_before_lockout=limits.auth_address_failures_before_lockout,
            lockout_seconds=float(limits.auth_lockout_seconds),
        )

    def _decide(self, peer: str, login: str | None) -> Decision:
        self._throttle.policy = self._policy()  # the limits of the moment (reload)
        decision = self._throttle.before(self._now(), peer, login)
        if decision.verdict is not Verdict.ALLOW:
            raise TemporarilyLocked(
                "Too many authentication failures from your address, try again later",
                log_detail=f"throttled: {decision.verdict.value} for "
                f"{decision.retry_after_seconds:.0f} s more",
            )
        return decision

    def check_not_locked(self, peer: str, login: str | None) -> None:
        """Raise TemporarilyLocked if `peer` (for `login`) is refused for now."""
        self._decide(peer, login)

    def record_failure(self, peer: str, login: str | None) -> float:
        """Count a failure; return how long to wait before answering."""
        return self._throttle.failed(self._now(), peer, login)

    def record_success(self, peer: str, login: str) -> None:
        self._throttle.succeeded(self._now(), peer, login)

    # --- checks -------------------------------------------------------------------

    async def password(
        self, *, login: str, password: str, authzid: str | None, peer: str
    ) -> Principal:
        """Verify a login and password; returns the principal or raises.

        Raises TemporarilyLocked while the peer or login is locked out (even with the
        right password), AuthenticationFailed after the slow-down otherwise.
        """
        person_login, star_box = split_login(login)
        decision = self._decide(peer, person_login)
        lock = self._login_locks.setdefault(person_login, asyncio.Lock())
        try:
            async with lock if decision.one_at_a_time else contextlib.nullcontext():
                person = self._config().person_by_login(person_login)
                if person is not None:
                    wanted = None if authzid == login else authzid or star_box
                    try:
                        self.check_method(person, AuthMethod.PASSWORD, wanted)
                    except MethodNotAllowed:
                        await asyncio.sleep(self.record_failure(peer, person_login))
                        raise
                ok = False
                if person is not None and person.password_hash:
                    ok = await self._verify(person, password)
                if not ok or person is None:
                    await asyncio.sleep(self.record_failure(peer, person_login))
                    raise AuthenticationFailed(
                        "Authentication failed",
                        log_detail="unknown login" if person is None else "bad password",
                    )
        finally:
            if not lock.locked():
                self._login_locks.pop(person_login, None)
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
                self.check_method(person, AuthMethod.CERTIFICATE, authzid)
                return self.authorize(person, "EXTERNAL", authzid)
        raise AuthenticationFailed(
            "Client certificate not linked to any person",
            log_detail=f"unknown fingerprint {fingerprint}",
        )

    @property
    def tokens_offered(self) -> bool:
        """Whether OAUTHBEARER/XOAUTH2 are offered (an issuer is configured)."""
        return self._tokens is not None and self._config().issuer is not None

    async def token(self, *, token: str, authzid: str | None, peer: str) -> Principal:
        """OAUTHBEARER / XOAUTH2: verify the access token, find the person it names.

        `authzid` (the GS2 `a=` or XOAUTH2's `user`) may be the person's own login, a
        box, or `person*box`. Raises TemporarilyLocked, TokenRejected (audited with its
        reason, answered with the RFC 7628 error), MethodNotAllowed or PermissionDenied.
        """
        self.check_not_locked(peer, None)
        config = self._config()
        issuer = config.issuer
        login: str | None = None
        try:
            if self._tokens is None or issuer is None:
                raise TokenRejected("no token issuer is configured")
            claims = await self._tokens.verify(token)
            person = tokens.person_for(config, issuer, tokens.identifier(claims, issuer))
            login = person.login
            self.check_not_locked(peer, login)
            box = authzid
            if authzid is not None and "*" in authzid:
                who, box = split_login(authzid)
                if who not in (person.login, person.id):
                    raise TokenRejected(
                        f"authorization identity {authzid!r} names another person than "
                        f"the token ({person.id})"
                    )
            self.check_method(person, AuthMethod.TOKEN, box)
        except (TokenRejected, MethodNotAllowed):
            await asyncio.sleep(self.record_failure(peer, login))
            raise
        principal = self.authorize(person, "TOKEN", box)
        self.record_success(peer, person.login)
        return principal

    def check_method(self, person: Person, method: AuthMethod, box_address: str | None) -> None:
        """MethodNotAllowed unless `person` and the box they ask for accept `method`."""
        if method not in person.auth_methods:
            allowed = _listing(person.auth_methods)
            raise MethodNotAllowed(
                f"{person.login} must log in with {allowed}",
                smtp=f"535 5.7.8 {person.login} must log in with {allowed}",
                log_detail=f"{method.value} login refused for {person.id} by auth.methods",
            )
        if box_address in (None, "", person.login, person.id):
            return
        assert box_address is not None
        box = self._config().mailbox(box_address)
        if box is not None and not method_allowed(box, method):
            allowed = _listing(box.auth_methods)
            raise MethodNotAllowed(
                f"{box.address} accepts only {allowed} logins",
                smtp=f"535 5.7.8 {box.address} accepts only {allowed} logins",
                log_detail=f"{method.value} login refused for {box.address} by auth.methods",
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
