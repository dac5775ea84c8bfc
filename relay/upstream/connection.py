"""An authenticated IMAP session to a box's operator (gateway mode).

`open_session` connects to `UpstreamConfig.imap` over TLS only: implicit TLS
(imaps, RFC 8314 §3.2) or STARTTLS (RFC 3501 §6.2.1; refused if the operator does not
offer it, never a fall back to clear text). The operator's certificate is verified
against the box's trust anchors and the endpoint's host name (RFC 6125) by the context
`relay.tls.context.client_context` builds, then the session logs in with the box's
password (LOGIN, read from `password_file` at each connection so it can be rotated
without a reload) or, with a client certificate, AUTHENTICATE EXTERNAL (RFC 4422
appendix A) with an empty initial response (SASL-IR, RFC 4959).

aioimaplib has neither STARTTLS nor AUTHENTICATE: both are done around it here, on
its protocol object (the command table gains AUTHENTICATE; STARTTLS upgrades the
transport in place with `loop.start_tls`), rather than in a second IMAP client.

Errors are typed so the sync engine can decide: `CredentialsRefused` (the operator
answered NO to the login: retrying will not help until someone changes the
credential), `Unreachable` (no TCP connection, a timeout, a TLS handshake failure, a
connection lost: retry with backoff), `UpstreamProtocolError` (the operator answered
something we cannot use). Their messages are for logs and `upstream status`; they
never contain the password.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import aioimaplib
from aioimaplib.aioimaplib import Abort, AioImapException, Cmd, Command, Commands, Exec

from relay.config.model import TlsMode, UpstreamConfig
from relay.errors import RelayError
from relay.tls.context import TlsError, client_context

__all__ = [
    "CredentialsRefused",
    "Unreachable",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamSession",
    "open_session",
    "read_password",
]

DEFAULT_TIMEOUT_SECONDS = 20.0

# aioimaplib refuses commands missing from its table; AUTHENTICATE (RFC 3501 §6.2.2)
# is sent synchronously in the not-authenticated state, like LOGIN.
if "AUTHENTICATE" not in Commands:
    Commands["AUTHENTICATE"] = Cmd("AUTHENTICATE", (aioimaplib.NONAUTH,), Exec.is_sync)


class UpstreamError(RelayError):
    """The operator's IMAP service could not be used; `str()` says why (for logs)."""


class Unreachable(UpstreamError):
    """No usable connection: refused, timed out, TLS failed or lost. Transient."""


class CredentialsRefused(UpstreamError):
    """The operator refused the box's credential (or it cannot be read). Retrying with
    the same credential is pointless: the state is recorded until the credential
    changes."""


class UpstreamProtocolError(UpstreamError):
    """The operator answered something we cannot use (no STARTTLS, a BAD, no IMAP4)."""


@dataclass(frozen=True, slots=True)
class Credential:
    login: str
    password: str | None  # None: AUTHENTICATE EXTERNAL with the client certificate


def read_password(up: UpstreamConfig) -> str | None:
    """The box's password: the first line of `password_file` (None: certificate)."""
    path = up.password_file
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CredentialsRefused(
            f"cannot read mailboxes.upstream.password_file {path}: {reason}"
        ) from None
    password = text.split("\n", 1)[0].rstrip("\r")
    if not password:
        raise CredentialsRefused(f"mailboxes.upstream.password_file {path} is empty")
    return password


def _text(lines: list[bytes]) -> str:
    """The operator's answer, printable, for a log line."""
    return " ".join(line.decode("utf-8", "replace").strip() for line in lines if line.strip())[:300]


class UpstreamSession:
    """An authenticated aioimaplib session to one box's operator.

    `client` is the aioimaplib `IMAP4` object, in the AUTH state, for the sync engine
    to use; `capabilities` is what the operator announced after login.
    """

    def __init__(self, box: str, endpoint: str, client: aioimaplib.IMAP4) -> None:
        self.box = box
        self.endpoint = endpoint
        self.client = client

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(c.upper() for c in self.client.protocol.capabilities)

    def has(self, capability: str) -> bool:
        return capability.upper() in self.capabilities

    async def logout(self) -> None:
        """LOGOUT (ending an IDLE first), then close the socket whatever the operator
        answers."""
        try:
            if self.client.has_pending_idle():
                self.client.idle_done()
            await asyncio.wait_for(self.client.logout(), 2.0)
        except asyncio.CancelledError:
            # aioimaplib cancels a command's future when the connection drops: that
            # is the operator's answer, not ours to pass on. A cancellation of this
            # task (the daemon stopping the box's loop) is passed on: swallowed, the
            # loop would go round again and its stop would wait for ever.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        except (AioImapException, OSError, TimeoutError):
            pass
        finally:
            transport = self.client.protocol.transport
            if transport is not None:
                transport.abort()


async def _starttls(
    client: aioimaplib.IMAP4, context: ssl.SSLContext, host: str, seconds: float
) -> None:
    """RFC 3501 §6.2.1: STARTTLS, then the TLS handshake on the same socket; the
    capabilities are asked again over TLS (those sent in clear are discarded)."""
    protocol = client.protocol
    if "STARTTLS" not in {c.upper() for c in protocol.capabilities}:
        raise UpstreamProtocolError("the operator does not offer STARTTLS")
    response = await asyncio.wait_for(
        protocol.execute(Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)), seconds
    )
    if response.result != "OK":
        raise UpstreamProtocolError(f"STARTTLS refused: {_text(response.lines)}")
    loop = asyncio.get_running_loop()
    transport = await asyncio.wait_for(
        loop.start_tls(protocol.transport, protocol, context, server_hostname=host), seconds
    )
    protocol.transport = transport
    await asyncio.wait_for(protocol.capability(), seconds)


async def _authenticate_external(client: aioimaplib.IMAP4, login: str, seconds: float) -> None:
    """AUTHENTICATE EXTERNAL (RFC 4422 appendix A): the TLS client certificate is the
    credential. The authorization identity is left empty ("="), so the operator
    derives it from the certificate; SASL-IR (RFC 4959) saves a round trip and is
    required (aioimaplib cannot answer a continuation for AUTHENTICATE)."""
    protocol = client.protocol
    if "SASL-IR" not in {c.upper() for c in protocol.capabilities}:
        raise UpstreamProtocolError(
            f"the operator does not offer SASL-IR: certificate login as {login} impossible"
        )
    response = await asyncio.wait_for(
        protocol.execute(
            Command("AUTHENTICATE", protocol.new_tag(), "EXTERNAL", "=", loop=protocol.loop)
        ),
        seconds,
    )
    if response.result != "OK":
        raise CredentialsRefused(f"certificate login refused: {_text(response.lines)}")
    protocol.state = aioimaplib.AUTH
    await asyncio.wait_for(protocol.capability(), seconds)


async def open_session(
    box: str,
    up: UpstreamConfig,
    *,
    minimum_tls_version: str = "1.2",
    context: ssl.SSLContext | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> UpstreamSession:
    """Connect, verify the operator's certificate, log in. Raises `Unreachable`,
    `CredentialsRefused` or `UpstreamProtocolError`; on any failure the socket is
    closed. `context` (else built from `up`) lets a caller reuse one context."""
    endpoint = up.imap.url("imaps", "imap")
    if context is None:
        try:
            context = client_context(up.tls_config(minimum_tls_version))
        except TlsError as exc:
            raise Unreachable(f"no TLS context for {endpoint}: {exc}") from None
    password = await asyncio.to_thread(read_password, up)
    host, port = up.imap.host, up.imap.port
    implicit = up.imap.tls is TlsMode.IMPLICIT
    client: aioimaplib.IMAP4
    if implicit:
        client = aioimaplib.IMAP4_SSL(
            host=host, port=port, timeout=timeout_seconds, ssl_context=context
        )
    else:
        client = aioimaplib.IMAP4(host=host, port=port, timeout=timeout_seconds)
    try:
        try:
            await client.wait_hello_from_server()
        except ssl.SSLCertVerificationError as exc:
            raise Unreachable(
                f"{endpoint}: the operator's certificate is not trusted: {exc.verify_message}"
            ) from None
        except (OSError, TimeoutError) as exc:
            raise Unreachable(f"{endpoint}: {_oserror(exc)}") from None
        except AioImapException as exc:
            raise UpstreamProtocolError(f"{endpoint}: bad greeting: {exc}") from None
        try:
            if not implicit:
                await _starttls(client, context, host, timeout_seconds)
            if password is None:
                await _authenticate_external(client, up.login, timeout_seconds)
            else:
                response = await client.login(up.login, password)
                if response.result != "OK":
                    raise CredentialsRefused(
                        f"{endpoint}: login {up.login} refused: {_text(response.lines)}"
                    )
        except ssl.SSLCertVerificationError as exc:
            raise Unreachable(
                f"{endpoint}: the operator's certificate is not trusted: {exc.verify_message}"
            ) from None
        except (OSError, TimeoutError) as exc:
            raise Unreachable(f"{endpoint}: {_oserror(exc)}") from None
        except Abort as exc:
            raise UpstreamProtocolError(f"{endpoint}: {exc}") from None
        except AioImapException as exc:
            raise Unreachable(f"{endpoint}: {exc}") from None
    except BaseException:
        transport = client.protocol.transport
        if transport is not None:
            transport.abort()
        if not client._client_task.done():
            client._client_task.cancel()
        raise
    return UpstreamSession(box, endpoint, client)


def _oserror(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError) or str(exc).startswith("Connect call failed"):
        # asyncio folds the attempts on every address of the name into one OSError
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
