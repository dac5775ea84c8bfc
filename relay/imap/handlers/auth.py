"""LOGIN and AUTHENTICATE (RFC 3501 §6.2; SASL PLAIN RFC 4616, EXTERNAL RFC 4422,
OAUTHBEARER RFC 7628 and XOAUTH2, SASL-IR RFC 4959): password, client-certificate and
access-token logins, authzid = a box.
"""

from __future__ import annotations

import asyncio

from relay.audit.events import AuthFailed, AuthSucceeded
from relay.config.model import TlsMode
from relay.errors import (
    AuthenticationFailed,
    MethodNotAllowed,
    PermissionDenied,
    ProtocolError,
    TemporarilyLocked,
    TokenRejected,
)
from relay.identity import sasl_oauth
from relay.identity.auth import Principal
from relay.imap import commands as c
from relay.imap import response as r
from relay.imap.handlers.common import (
    Cannot,
    ClientBug,
    ImapError,
    PrivacyRequired,
    Result,
    capabilities,
    record,
)
from relay.imap.parser import SaslCancelled, parse_sasl_response
from relay.imap.session import Closing, Session
from relay.tls.peer import peer_from_ssl_object


def secure(s: Session) -> bool:
    return s.tls_active or s.service.listener.tls is TlsMode.NONE


async def _auth_ok(s: Session, principal: Principal, mechanism: str, login: str) -> Result:
    await record(
        s,
        AuthSucceeded(
            person=principal.person_id,
            box=principal.as_box,
            peer=s.peer,
            protocol="imap",
            mechanism=mechanism,
            login=login,
            answer="OK",
        ),
    )
    s.authenticated(principal)
    return "Logged in", r.capability_code(capabilities(s))


async def _auth_failed(s: Session, mechanism: str, login: str | None, exc: ProtocolError) -> None:
    code = exc.imap_code
    if isinstance(exc, PermissionDenied):
        code = "AUTHORIZATIONFAILED"
    await record(
        s,
        AuthFailed(
            peer=s.peer,
            protocol="imap",
            mechanism=mechanism,
            login=login,
            reason=exc.log_detail or exc.text,
            answer=f"NO [{code}]",
        ),
    )
    public = not isinstance(exc, AuthenticationFailed) or isinstance(exc, MethodNotAllowed)
    err = ImapError(exc.text if public else "Authentication failed")
    err.imap_code = code
    raise err


async def _password(
    s: Session, mechanism: str, login: str, password: str, authzid: str | None
) -> Result:
    try:
        principal = await s.runtime.authenticator.password(
            login=login, password=password, authzid=authzid, peer=s.peer
        )
    except (AuthenticationFailed, PermissionDenied, TemporarilyLocked) as exc:
        await _auth_failed(s, mechanism, login, exc)
        raise AssertionError("unreachable") from None
    return await _auth_ok(s, principal, mechanism, login)


async def h_login(s: Session, cmd: c.Login) -> Result:
    if not secure(s):
        raise PrivacyRequired("LOGIN is only allowed over TLS: use STARTTLS first")
    return await _password(s, "LOGIN", cmd.username, cmd.password, None)


async def _sasl_response(s: Session, initial: bytes | None) -> bytes:
    if initial is not None:
        return initial
    s.emit(r.continuation(""))
    line = await s.read_line()
    if line is None:
        raise Closing
    if not isinstance(line, bytes):
        raise ClientBug("Line too long")
    value = parse_sasl_response(line)
    if isinstance(value, SaslCancelled):
        raise ClientBug("AUTHENTICATE cancelled")
    if value is None:
        raise ClientBug("Invalid base64 in the SASL response")
    return value


async def h_authenticate(s: Session, cmd: c.Authenticate) -> Result:
    if not secure(s):
        raise PrivacyRequired("Authentication is only allowed over TLS: use STARTTLS first")
    if cmd.mechanism == "PLAIN":
        # RFC 4616: authzid NUL authcid NUL passwd
        data = await _sasl_response(s, cmd.initial_response)
        parts = data.split(b"\0")
        if len(parts) != 3:
            raise ClientBug("Malformed PLAIN response")
        try:
            authzid, login, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            raise ClientBug("PLAIN response is not UTF-8") from None
        # Clients such as mbsync repeat the login as authzid: that asks for nothing more.
        return await _password(
            s, "PLAIN", login, password, None if authzid == login else authzid or None
        )
    if cmd.mechanism == "EXTERNAL":
        data = await _sasl_response(s, cmd.initial_response)
        ext_authzid = data.decode("utf-8", "replace") or None
        cert = peer_from_ssl_object(s.writer.get_extra_info("ssl_object"))
        try:
            if cert is None:
                raise AuthenticationFailed(
                    "EXTERNAL needs a client certificate", log_detail="no certificate"
                )
            s.runtime.authenticator.check_not_locked(s.peer, None)
            principal = s.runtime.authenticator.certificate(cert.fingerprint_sha256, ext_authzid)
        except (AuthenticationFailed, PermissionDenied, TemporarilyLocked) as exc:
            await asyncio.sleep(s.runtime.authenticator.record_failure(s.peer, None))
            await _auth_failed(s, "EXTERNAL", None, exc)
            raise AssertionError("unreachable") from None
        return await _auth_ok(s, principal, "EXTERNAL", principal.person.login)
    if (
        cmd.mechanism in sasl_oauth.PARSERS
        and s.tls_active
        and s.runtime.authenticator.tokens_offered
    ):
        return await _token(s, cmd.mechanism, await _sasl_response(s, cmd.initial_response))
    raise Cannot("Unsupported authentication mechanism")


async def _token(s: Session, mechanism: str, data: bytes) -> Result:
    """OAUTHBEARER / XOAUTH2: a refused token gets the RFC 7628 §3.2.2 error challenge,
    the client's dummy answer, then NO [AUTHENTICATIONFAILED]."""
    try:
        bearer = sasl_oauth.PARSERS[mechanism](data)
    except sasl_oauth.MalformedOAuthResponse as exc:
        raise ClientBug(f"Malformed {mechanism} response: {exc}") from None
    try:
        principal = await s.runtime.authenticator.token(
            token=bearer.token, authzid=bearer.authzid, peer=s.peer
        )
    except TokenRejected as exc:
        issuer = s.runtime.config.issuer
        if issuer is not None:
            error = sasl_oauth.failure_challenge(
                mechanism, exc.status, issuer.scope, issuer.discovery_url
            )
            s.emit(r.sasl_challenge(error))
            await s.read_line()  # the client's %x01 (RFC 7628 §3.2.3); anything ends it
        await _auth_failed(s, mechanism, bearer.authzid, exc)
        raise AssertionError("unreachable") from None
    except (AuthenticationFailed, PermissionDenied, TemporarilyLocked) as exc:
        await _auth_failed(s, mechanism, bearer.authzid, exc)
        raise AssertionError("unreachable") from None
    return await _auth_ok(s, principal, mechanism, principal.person.login)
