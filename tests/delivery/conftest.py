"""Support for delivery tests: scripted peer MTAs (aiosmtpd with the dev PKI's
certificates, in the test's event loop), a movable clock, a second storage for a
second mss-relay, submission helpers and a bounded wait."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email
import email.policy
import secrets
import smtplib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from relay.config.model import StorageConfig
from relay.store.queue import QueueItem, QueueStore
from relay.tls.pki import DevPki
from tests.conftest import PG_URL, _drop_schema
from tests.harness import MARTIN_BOX, PASSWORDS, PEER_DOMAIN, RunningDaemon

DR_X = f"dr.x@{PEER_DOMAIN}"
DR_Y = f"dr.y@{PEER_DOMAIN}"
DR_Z = f"dr.z@{PEER_DOMAIN}"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    client_subject: str | None  # the certificate our daemon presented


@dataclass
class FakePeer:
    """A peer MTA with scripted replies. `rcpt_replies` maps a recipient to its RCPT
    reply; `data_replies` are used in order, then "250"; `stall` holds the reply to
    DATA until released (a delivery in flight)."""

    cert: str | None  # dev PKI certificate name; None: no STARTTLS offered at all
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_replies: list[str] = field(default_factory=list)
    stall: asyncio.Event | None = None
    client_ca: Path | None = None  # CA file our daemon's certificate must chain to
    size_limit: int = 33_554_432  # advertised as SIZE (RFC 1870)
    mail_options: list[list[str]] = field(default_factory=list)  # per MAIL FROM
    mails: list[str] = field(default_factory=list)  # every MAIL FROM seen
    data_seen: list[Received] = field(default_factory=list)  # every DATA, whatever reply
    accepted: list[Received] = field(default_factory=list)  # DATA answered 250
    # The reply to EHLO inside TLS instead of the capabilities: how Postfix with
    # smtpd_tls_req_ccert refuses a client certificate it does not trust.
    ehlo_in_tls_reply: str | None = None
    quits: int = 0  # QUIT commands seen
    got_data: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _server: asyncio.Server | None = None

    # aiosmtpd handler hooks

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        if self.ehlo_in_tls_reply is not None and session.ssl is not None:
            return [self.ehlo_in_tls_reply]
        session.host_name = hostname
        return responses

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.quits += 1
        return "221 2.0.0 Bye"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.mails.append(address)
        self.mail_options.append(list(options))
        envelope.mail_from = address
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt_replies.get(address, "250 2.1.5 OK")
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        ssl_obj = server.transport.get_extra_info("ssl_object") if server.transport else None
        subject = None
        if ssl_obj is not None:
            cert = ssl_obj.getpeercert()
            subject = ",".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)
        got = Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            content=bytes(envelope.original_content or b""),
            client_subject=subject,
        )
        self.data_seen.append(got)
        self.got_data.set()
        if self.stall is not None:
            await self.stall.wait()
            if server.transport is None or server.transport.is_closing():
                return "421 4.4.2 the client is gone"  # nobody hears it: not accepted
        reply = self.data_replies.pop(0) if self.data_replies else "250 2.0.0 OK"
        if reply.startswith("250"):
            self.accepted.append(got)
        return reply

    async def start(self, pki: DevPki) -> None:
        ctx: ssl.SSLContext | None = None
        if self.cert is not None:
            chain, key = pki.cert_and_key(self.cert)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(chain, key)
            # Like a real operator: our daemon must present a certificate of the PKI.
            ctx.load_verify_locations(cafile=self.client_ca or pki.ca_bundle)
            ctx.verify_mode = ssl.CERT_REQUIRED
        loop = asyncio.get_running_loop()

        def protocol() -> SMTP:
            return SMTP(
                self,
                hostname="peer.localhost",
                tls_context=ctx,
                require_starttls=ctx is not None,
                enable_SMTPUTF8=True,
                data_size_limit=self.size_limit,
                loop=loop,
            )

        self._server = await loop.create_server(protocol, host="127.0.0.1", port=0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.stall is not None:
            self.stall.set()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)


@pytest.fixture
async def peers(dev_pki: DevPki) -> AsyncIterator[Callable[..., Awaitable[FakePeer]]]:
    """Factory of started fake peers, stopped at the end of the test."""
    started: list[FakePeer] = []

    async def make(cert: str | None = "peer", **kwargs: Any) -> FakePeer:
        peer = FakePeer(cert, **kwargs)
        await peer.start(dev_pki)
        started.append(peer)
        return peer

    yield make
    for peer in started:
        await peer.stop()


def route(domain: str, port: int, *, host: str = "localhost", peer_dn: str | None = None) -> str:
    """A [[routes]] table for the test config."""
    text = f'\n[[routes]]\ndomain = "{domain}"\nhost = "{host}"\nport = {port}\n'
    if peer_dn is not None:
        text += f'peer_dn = "{peer_dn}"\n'
    return text


class Clock:
    """The daemon's clock, moved by tests instead of sleeping."""

    def __init__(self) -> None:
        self.offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += dt.timedelta(seconds=seconds)


def use_clock(d: RunningDaemon) -> Clock:
    clock = Clock()
    d.runtime.clock = clock
    return clock


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, timeout: float = 15.0, what: str = "condition"
) -> None:
    """Poll `condition` (every 20 ms) until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def queue_rows(d: RunningDaemon) -> list[QueueItem]:
    return await QueueStore(d.store).pending()


async def wait_status(d: RunningDaemon, status: str, *, count: int = 1) -> list[QueueItem]:
    """Wake the worker and wait until `count` rows have `status`; return them."""
    assert d.daemon.worker is not None
    d.daemon.worker.wake()

    async def ok() -> bool:
        return len([r for r in await queue_rows(d) if r.status == status]) >= count

    await wait_until(ok, what=f"{count} queue row(s) {status}")
    return [r for r in await queue_rows(d) if r.status == status]


async def wait_queue_empty(d: RunningDaemon) -> None:
    assert d.daemon.worker is not None
    d.daemon.worker.wake()

    async def empty() -> bool:
        return not await queue_rows(d)

    await wait_until(empty, what="an empty queue")


def letter(frm: str, to: str, mid: str = "cr1", subject: str = "Compte rendu") -> bytes:
    return (
        f"From: <{frm}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{mid}@cabinet.example>\r\nX-MSS-CODECDA: 11488-4\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Compte rendu de consultation (contenu de test).\r\n"
    ).encode()


def submit_sync(
    port: int,
    ca_bundle: Path,
    rcpts: list[str],
    data: bytes,
    *,
    login: str = "martin",
    password: str = PASSWORDS["martin"],
    mail_from: str = MARTIN_BOX,
) -> tuple[int, bytes]:
    """One STARTTLS submission; the first non-250 reply, or DATA's."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.starttls(context=ssl.create_default_context(cafile=str(ca_bundle)))
        s.ehlo("cabinet.example")
        s.login(login, password)
        code, msg = s.mail(mail_from)
        if code != 250:
            return code, msg
        for r in rcpts:
            code, msg = s.rcpt(r)
            if code != 250:
                return code, msg
        return s.data(data)


async def submit(
    d: RunningDaemon, rcpts: list[str], data: bytes | None = None, **kwargs: Any
) -> tuple[int, bytes]:
    data = data if data is not None else letter(MARTIN_BOX, rcpts[0])
    return await asyncio.to_thread(
        submit_sync, d.ports["submission"], d.pki.ca_bundle, rcpts, data, **kwargs
    )


@pytest.fixture
async def second_storage(engine_name: str, tmp_path: Path) -> AsyncIterator[StorageConfig]:
    """A second, empty database on the engine of this run (for a second mss-relay)."""
    key_file = tmp_path / "second-blob.key"
    if engine_name == "sqlite":
        yield StorageConfig(url=f"sqlite+aiosqlite:///{tmp_path / 'second.db'}", key_file=key_file)
        return
    schema = f"t_{secrets.token_hex(6)}"
    yield StorageConfig(url=PG_URL, key_file=key_file, schema=schema)
    await _drop_schema(schema)


def parse_message(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def delivery_status_blocks(raw: bytes) -> list[dict[str, str]]:
    """The per-recipient blocks of a DSN's message/delivery-status part (RFC 3464)."""
    report = parse_message(raw)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    [part] = [p for p in report.iter_parts() if p.get_content_type() == "message/delivery-status"]
    blocks = part.get_payload()
    assert isinstance(blocks, list)
    out: list[dict[str, str]] = []
    for block in blocks[1:]:
        assert not isinstance(block, str)
        out.append({k.lower(): str(v) for k, v in block.items()})
    return out
