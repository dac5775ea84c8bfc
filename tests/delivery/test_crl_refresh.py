"""CRL refresh: distribution points served over http on 127.0.0.1, new CRLs swapped in
without dropping open connections, forged CRLs refused, a stale CRL fails closed with
one log line and one audit event."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import smtplib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from structlog.testing import capture_logs

from relay.config.model import StorageConfig
from relay.delivery.crl import CrlFetchError, distribution_points, fetch_crl
from relay.store.store import AuditFilter
from relay.tls import pki as pki_module
from relay.tls.pki import DevPki, generate_dev_pki
from tests.delivery.conftest import (
    DR_X,
    FakePeer,
    route,
    submit,
    use_clock,
    wait_queue_empty,
    wait_status,
)
from tests.harness import PEER_DOMAIN, RunningDaemon, start_daemon

Peers = Callable[..., Awaitable[FakePeer]]


@dataclass
class CrlServer:
    """A tiny HTTP/1.0 server on 127.0.0.1: path → bytes; counts requests."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    hang: bool = False  # accept, then never answer (fetch timeout)
    port: int = 0
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b""):
                pass
            path = line.split()[1].decode() if len(line.split()) > 1 else "/"
            self.requests.append(path)
            if self.hang:
                await asyncio.sleep(30)
                return
            body = self.files.get(path)
            if body is None:
                writer.write(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            else:
                writer.write(
                    b"HTTP/1.0 200 OK\r\nContent-Type: application/pkix-crl\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def crl_server() -> AsyncIterator[CrlServer]:
    srv = CrlServer()
    srv.server = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.port = srv.server.sockets[0].getsockname()[1]
    yield srv
    srv.server.close()


def make_pki(
    directory: Path, srv: CrlServer, monkeypatch: pytest.MonkeyPatch, now: dt.datetime | None = None
) -> DevPki:
    """A dev PKI whose certificates name `srv` as their CRL distribution point, and
    whose CRLs `srv` serves."""
    monkeypatch.setattr(pki_module, "CRL_DISTRIBUTION_URL", srv.url("/intermediate.crl"))
    monkeypatch.setattr(pki_module, "ROOT_CRL_DISTRIBUTION_URL", srv.url("/root.crl"))
    pki = generate_dev_pki(directory, "localhost", now=now)
    srv.files["/intermediate.crl"] = pki.intermediate_crl_der.read_bytes()
    srv.files["/root.crl"] = pki.root_crl_der.read_bytes()
    return pki


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def new_crl(
    pki: DevPki,
    *,
    revoke: list[str],
    number: int,
    now: dt.datetime,
    signer_key: Path | None = None,
    root: bool = False,
) -> bytes:
    """A DER CRL of the intermediate (or root) revoking the named certificates."""
    issuer_cert = x509.load_pem_x509_certificate(
        (pki.root_ca if root else pki.intermediate_ca).read_bytes()
    )
    key = serialization.load_pem_private_key(
        (signer_key or (pki.root_ca_key if root else pki.intermediate_ca_key)).read_bytes(),
        password=None,
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(now + dt.timedelta(days=7))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for name in revoke:
        chain, _ = pki.cert_and_key(name)
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(_serial(chain))
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def implicit_tls_ehlo(d: RunningDaemon, cert: str) -> int:
    """EHLO on the implicit-TLS submission port presenting `cert` (a client certificate
    sent there is verified like a required one)."""
    ctx = ssl.create_default_context(cafile=str(d.pki.ca_bundle))
    chain, key = d.pki.cert_and_key(cert)
    ctx.load_cert_chain(str(chain), str(key))
    with smtplib.SMTP_SSL("127.0.0.1", d.ports["submission-tls"], context=ctx, timeout=10) as s:
        code, _ = s.ehlo("cabinet.example")
        return code


def inbound_session(d: RunningDaemon, cert: str) -> smtplib.SMTP:
    """A peer operator's session on our inbound port, TLS up, MAIL accepted."""
    s = smtplib.SMTP("127.0.0.1", d.ports["inbound"], timeout=10)
    ctx = ssl.create_default_context(cafile=str(d.pki.ca_bundle))
    chain, key = d.pki.cert_and_key(cert)
    ctx.load_cert_chain(str(chain), str(key))
    s.ehlo("mx.peer.mssante.fr")
    s.starttls(context=ctx)
    s.ehlo("mx.peer.mssante.fr")
    return s


async def test_distribution_points_and_fetch(
    tmp_path: Path, crl_server: CrlServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = make_pki(tmp_path, crl_server, monkeypatch)
    leaf = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    inter = x509.load_pem_x509_certificate(pki.intermediate_ca.read_bytes())
    assert distribution_points([leaf, inter, leaf]) == [
        crl_server.url("/intermediate.crl"),
        crl_server.url("/root.crl"),
    ]
    data = await fetch_crl(crl_server.url("/intermediate.crl"))
    assert data == pki.intermediate_crl_der.read_bytes()
    with pytest.raises(CrlFetchError, match=r"HTTP status 'HTTP/1\.0 404"):
        await fetch_crl(crl_server.url("/missing.crl"))
    with pytest.raises(CrlFetchError, match="larger than 10 bytes"):
        await fetch_crl(crl_server.url("/root.crl"), max_bytes=10)
    with pytest.raises(CrlFetchError, match="only http://"):
        await fetch_crl("https://127.0.0.1/x.crl")


async def test_new_crl_revokes_a_peer_without_dropping_open_sessions(
    tmp_path: Path,
    storage: StorageConfig,
    crl_server: CrlServer,
    monkeypatch: pytest.MonkeyPatch,
    peers: Peers,
) -> None:
    pki = make_pki(tmp_path / "pki", crl_server, monkeypatch)
    peer = FakePeer("peer")
    await peer.start(pki)
    d = await start_daemon(tmp_path, pki, storage, extra=route(PEER_DOMAIN, peer.port))
    refresher = d.daemon.crl_refresher
    assert refresher is not None
    try:
        await d.trust_peer()
        # the refresher fetched both distribution points
        await refresher.refresh()
        assert {"/intermediate.crl", "/root.crl"} <= set(crl_server.requests)
        assert await asyncio.to_thread(implicit_tls_ehlo, d, "person-martin") == 250
        # a peer operator is connected and mid-session
        session = await asyncio.to_thread(inbound_session, d, "peer")
        code, _ = await asyncio.to_thread(session.mail, f"dr.x@{PEER_DOMAIN}")
        assert code == 250

        now = dt.datetime.now(dt.UTC)
        crl_server.files["/intermediate.crl"] = new_crl(
            pki, revoke=["revoked", "peer", "person-martin"], number=2, now=now
        )
        await refresher.refresh()
        [updated] = await d.store.audit_rows(AuditFilter(action="tls.crl_updated"))
        details = json.loads(updated.data)["details"]
        assert details["crl_number"] == 2 and details["source"].endswith("/intermediate.crl")
        assert "ORGANISATIONS" in details["issuer"]

        # the open session goes on (its handshake was done with the old CRL)
        code, _ = await asyncio.to_thread(session.rcpt, "secretariat@cpts-demo.mssante.fr")
        assert code == 250
        code, _ = await asyncio.to_thread(
            session.data, b"Subject: still here\r\n\r\nbefore the swap\r\n"
        )
        assert code == 250
        await asyncio.to_thread(session.quit)
        # a new session with the now revoked certificate fails its handshake
        with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
            s = await asyncio.to_thread(inbound_session, d, "peer")
            await asyncio.to_thread(s.mail, f"dr.x@{PEER_DOMAIN}")
        # the implicit-TLS listener switched too (its context is chosen per handshake)
        with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
            await asyncio.to_thread(implicit_tls_ehlo, d, "person-martin")
        # and nothing goes out to a peer presenting it
        assert (await submit(d, [DR_X]))[0] == 250
        [row] = await wait_status(d, "deferred")
        assert "certificate revoked" in (row.last_reply or "")
        assert peer.mails == []
        # the fetched CRL is kept for the next start (no network needed then)
        cached = list((tmp_path / "data" / "crl").glob("fetched-*.crl"))
        assert len(cached) == 2
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)
        await peer.stop()


async def test_forged_crl_is_refused_and_the_old_one_kept(
    tmp_path: Path,
    storage: StorageConfig,
    crl_server: CrlServer,
    monkeypatch: pytest.MonkeyPatch,
    peers: Peers,
) -> None:
    pki = make_pki(tmp_path / "pki", crl_server, monkeypatch)
    peer = FakePeer("peer")
    await peer.start(pki)
    d = await start_daemon(
        tmp_path,
        pki,
        storage,
        limits="crl_fetch_timeout_seconds = 1\n",
        extra=route(PEER_DOMAIN, peer.port),
    )
    refresher = d.daemon.crl_refresher
    assert refresher is not None
    try:
        await d.trust_peer()
        before = refresher.active
        # signed by the rogue CA's key under the intermediate's name: revokes "peer"
        forged = new_crl(
            pki,
            revoke=["peer"],
            number=99,
            now=dt.datetime.now(dt.UTC),
            signer_key=pki.rogue_ca_key,
        )
        crl_server.files["/intermediate.crl"] = forged
        with capture_logs() as logs:
            await refresher.refresh()
            await refresher.refresh()  # reported once, not at every refresh
        rejected = await d.store.audit_rows(AuditFilter(action="tls.crl_rejected"))
        assert len(rejected) == 1
        assert "signature does not verify" in json.loads(rejected[0].data)["details"]["reason"]
        assert [e["event"] for e in logs].count("tls.crl_rejected") == 1
        assert refresher.active == before
        # a server that accepts and never answers: bounded by crl_fetch_timeout_seconds
        crl_server.hang = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        await refresher.refresh()
        assert loop.time() - started < 5
        assert refresher.active == before
        # the peer is still trusted: the forged CRL changed nothing
        assert (await submit(d, [DR_X]))[0] == 250
        await wait_queue_empty(d)
        assert len(peer.accepted) == 1
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)
        await peer.stop()


async def test_stale_crl_fails_closed_with_one_log_line_and_one_event(
    tmp_path: Path,
    storage: StorageConfig,
    crl_server: CrlServer,
    monkeypatch: pytest.MonkeyPatch,
    peers: Peers,
) -> None:
    # Made 40 days ago: CRLs (30 days) expired 10 days ago; the grace is one day.
    pki = make_pki(
        tmp_path / "pki",
        crl_server,
        monkeypatch,
        now=dt.datetime.now(dt.UTC) - dt.timedelta(days=40),
    )
    crl_server.files.clear()  # and no fresher CRL can be fetched
    peer = FakePeer("peer")
    await peer.start(pki)
    with capture_logs() as logs:
        d = await start_daemon(tmp_path, pki, storage, extra=route(PEER_DOMAIN, peer.port))
    refresher = d.daemon.crl_refresher
    assert refresher is not None
    clock = use_clock(d)
    try:
        await d.trust_peer()
        stale_lines = [e for e in logs if e["event"] == "tls.crl_stale"]
        assert len(stale_lines) == 2  # root and intermediate, one line each
        assert all(
            e["log_level"] == "error" and "fails closed" in e["message"] for e in stale_lines
        )
        events = await d.store.audit_rows(AuditFilter(action="tls.crl_stale"))
        assert len(events) == 2
        assert refresher.stale_issuers == {pki_module.ROOT_DN, pki_module.INTERMEDIATE_DN}
        # still stale at the next refresh: no new event
        await refresher.refresh()
        assert len(await d.store.audit_rows(AuditFilter(action="tls.crl_stale"))) == 2

        # fail closed: nothing goes out
        assert (await submit(d, [DR_X]))[0] == 250
        [row] = await wait_status(d, "deferred")
        assert "CRL has expired" in (row.last_reply or ""), row.last_reply
        assert peer.mails == []

        # fresh CRLs are published: the next refresh brings the peer back
        now = dt.datetime.now(dt.UTC)
        crl_server.files["/intermediate.crl"] = new_crl(pki, revoke=["revoked"], number=2, now=now)
        crl_server.files["/root.crl"] = new_crl(pki, revoke=[], number=2, now=now, root=True)
        await refresher.refresh()
        assert refresher.stale_issuers == frozenset()
        clock.advance(301)  # the retry is due
        await wait_queue_empty(d)
        assert len(peer.accepted) == 1
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)
        await peer.stop()
