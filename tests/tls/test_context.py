"""Real TLS handshakes over 127.0.0.1 with contexts from `relay.tls.context`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import re
import ssl
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relay.config.model import TlsConfig
from relay.tls.context import TlsError, client_context, crl_status, server_context
from relay.tls.peer import PeerCertificate, peer_from_ssl_object
from relay.tls.pki import CRL_LIFETIME, DevPki, generate_dev_pki
from tests.tls.conftest import PKI_HOSTNAME

TIMEOUT = 5.0


@dataclass
class Server:
    port: int
    peers: list[PeerCertificate | None] = field(default_factory=list)
    versions: list[str | None] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # server-side handshake failures


@contextlib.asynccontextmanager
async def tls_server(ctx: ssl.SSLContext) -> AsyncIterator[Server]:
    """A TLS server on 127.0.0.1 that answers "OK <peer fingerprint or ->" once the
    handshake has succeeded, and records who connected.

    The handshake is started by the handler after a plain "READY" line, the way
    STARTTLS works, rather than by `start_server(ssl=...)`: so the server's own
    verification error is seen here (with TLS 1.3 the client may only see the
    connection close), and no ClientHello can arrive before `start_tls`.
    """
    state = Server(port=0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"READY\n")
        try:
            await asyncio.wait_for(writer.start_tls(ctx), TIMEOUT)
        except (ssl.SSLError, ConnectionError, TimeoutError) as exc:
            message = exc.verify_message if isinstance(exc, ssl.SSLCertVerificationError) else ""
            state.errors.append(f"{exc} {message}".lower())
            writer.transport.abort()
            return
        ssl_object = writer.get_extra_info("ssl_object")
        peer = peer_from_ssl_object(ssl_object)
        state.peers.append(peer)
        state.versions.append(ssl_object.version())
        writer.write(f"OK {peer.fingerprint_sha256 if peer else '-'}\n".encode())
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.drain()
            writer.close()
            await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    async with server:
        yield state


async def attempt(port: int, ctx: ssl.SSLContext, server_hostname: str = PKI_HOSTNAME) -> str:
    """Connect, read the server's line. "OK ..." on success, else "ERR <error>".

    With TLS 1.3 a client learns that the server refused its certificate only when
    it reads (the server's alert arrives after the client's Finished), hence the
    read is part of the attempt.
    """
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    try:
        assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"READY\n"
        await asyncio.wait_for(writer.start_tls(ctx, server_hostname=server_hostname), TIMEOUT)
        line = await asyncio.wait_for(reader.readline(), TIMEOUT)
        return line.decode().strip() if line else "ERR EOF"
    except (ssl.SSLError, ConnectionError) as exc:
        return f"ERR {exc}"
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


async def server_error(server: Server) -> str:
    """The server's handshake error, waiting (bounded) for its handler to record it."""
    for _ in range(int(TIMEOUT / 0.01)):
        if server.errors:
            return " | ".join(server.errors)
        await asyncio.sleep(0.01)
    raise AssertionError("the server recorded no handshake error")


def client_without_checks(pki: DevPki, name: str | None) -> ssl.SSLContext:
    """A client that trusts the dev CAs and presents certificate `name`."""
    return client_context(pki.tls_config(name, with_crls=False))


# --- server side: who may connect -------------------------------------------------


async def test_valid_client_certificate_accepted(pki: DevPki) -> None:
    ctx = server_context(pki.tls_config("server"), require_client_certificate=True)
    async with tls_server(ctx) as server:
        for name in ("peer", "person-martin"):
            answer = await attempt(server.port, client_without_checks(pki, name))
            assert answer == f"OK {pki.fingerprints[name]}"
    assert [p.subject if p else None for p in server.peers] == [
        pki.subjects["peer"],
        pki.subjects["person-martin"],
    ]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("rogue", "unable to get local issuer certificate"),
        ("expired", "certificate has expired"),
        ("revoked", "certificate revoked"),
    ],
)
async def test_bad_client_certificate_rejected(pki: DevPki, name: str, reason: str) -> None:
    ctx = server_context(pki.tls_config("server"), require_client_certificate=True)
    async with tls_server(ctx) as server:
        answer = await attempt(server.port, client_without_checks(pki, name))
        error = await server_error(server)
    assert answer.startswith("ERR")
    assert reason in error
    assert server.peers == []


async def test_without_crls_revocation_is_not_checked(pki: DevPki) -> None:
    """Documented behaviour: no CRL files, no revocation check. Deployments must
    configure CRLs; this test pins the behaviour so nobody relies on the opposite."""
    ctx = server_context(pki.tls_config("server", with_crls=False), require_client_certificate=True)
    async with tls_server(ctx) as server:
        answer = await attempt(server.port, client_without_checks(pki, "revoked"))
    assert answer == f"OK {pki.fingerprints['revoked']}"


async def test_client_certificate_required(pki: DevPki) -> None:
    ctx = server_context(pki.tls_config("server"), require_client_certificate=True)
    async with tls_server(ctx) as server:
        answer = await attempt(server.port, client_without_checks(pki, None))
        error = await server_error(server)
    assert answer.startswith("ERR")
    assert "peer did not return a certificate" in error
    assert server.peers == []


async def test_optional_client_certificate_still_verified(pki: DevPki) -> None:
    ctx = server_context(pki.tls_config("server"), require_client_certificate=False)
    async with tls_server(ctx) as server:
        assert await attempt(server.port, client_without_checks(pki, None)) == "OK -"
        answer = await attempt(server.port, client_without_checks(pki, "person-dupont"))
        assert answer == f"OK {pki.fingerprints['person-dupont']}"
        rogue = await attempt(server.port, client_without_checks(pki, "rogue"))
        assert "unable to get local issuer certificate" in await server_error(server)
        server.errors.clear()
        revoked = await attempt(server.port, client_without_checks(pki, "revoked"))
        assert "certificate revoked" in await server_error(server)
    assert rogue.startswith("ERR")
    assert revoked.startswith("ERR")
    assert server.peers[0] is None
    assert len(server.peers) == 2


# --- protocol versions ------------------------------------------------------------


def _legacy_tls11_client() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    # TLS 1.1 needs SHA-1/MD5, which OpenSSL 3 only allows at security level 0.
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def _legacy_tls11_server(pki: DevPki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    return ctx


async def test_tls11_client_refused(pki: DevPki) -> None:
    # Control: the TLS 1.1 client does work against a server that allows it, so the
    # refusal below comes from our server, not from this machine's OpenSSL.
    async with tls_server(_legacy_tls11_server(pki)) as legacy:
        control = await attempt(legacy.port, _legacy_tls11_client())
    if control.startswith("ERR"):
        pytest.skip(f"this OpenSSL cannot speak TLS 1.1 at all: {control}")
    assert legacy.versions == ["TLSv1.1"]

    ctx = server_context(pki.tls_config("server"), require_client_certificate=False)
    async with tls_server(ctx) as server:
        answer = await attempt(server.port, _legacy_tls11_client())
        error = await server_error(server)
    assert answer.startswith("ERR")
    assert "unsupported protocol" in error
    assert server.peers == []


async def test_minimum_version_13_enforced(pki: DevPki) -> None:
    client = client_without_checks(pki, "peer")
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    for minimum, accepted in (("1.2", True), ("1.3", False)):
        ctx = server_context(
            pki.tls_config("server", minimum_version=minimum), require_client_certificate=True
        )
        async with tls_server(ctx) as server:
            answer = await attempt(server.port, client)
        assert answer.startswith("OK") is accepted, (minimum, answer)
        assert server.versions == (["TLSv1.2"] if accepted else [])


# --- client side: which servers we accept -----------------------------------------


async def test_client_verifies_server(pki: DevPki) -> None:
    ctx = server_context(pki.tls_config("server"), require_client_certificate=True)
    client = client_context(pki.tls_config("peer"))
    async with tls_server(ctx) as server:
        for hostname in (PKI_HOSTNAME, "localhost", "127.0.0.1"):
            assert await attempt(server.port, client, hostname) == (
                f"OK {pki.fingerprints['peer']}"
            )
        mismatch = await attempt(server.port, client, "other.example")
    assert mismatch.startswith("ERR")
    assert "hostname mismatch" in mismatch.lower()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("rogue", "unable to get local issuer certificate"),
        ("expired", "certificate has expired"),
        ("revoked", "certificate revoked"),
    ],
)
async def test_client_refuses_bad_server(pki: DevPki, name: str, reason: str) -> None:
    ctx = server_context(pki.tls_config(name), require_client_certificate=False)
    client = client_context(pki.tls_config("peer"))
    async with tls_server(ctx) as server:
        answer = await attempt(server.port, client, "localhost")
    assert answer.startswith("ERR")
    assert reason in answer.lower()
    assert server.peers == []


async def test_der_crls_and_missing_crl_fails_closed(pki: DevPki) -> None:
    """VERIFY_CRL_CHECK_CHAIN wants a CRL for each CA of the chain: with only the
    intermediate's CRL the root has none and the handshake fails."""
    ctx = server_context(pki.tls_config("server"), require_client_certificate=False)
    both = dataclasses.replace(
        pki.tls_config("peer"), crl_files=(pki.intermediate_crl_der, pki.root_crl_der)
    )
    only_intermediate = dataclasses.replace(both, crl_files=(pki.intermediate_crl_der,))
    async with tls_server(ctx) as server:
        ok = await attempt(server.port, client_context(both))
        missing = await attempt(server.port, client_context(only_intermediate))
    assert ok.startswith("OK")
    assert missing.startswith("ERR")
    assert "unable to get certificate crl" in missing.lower()


async def test_revoked_refused_with_der_crls(pki: DevPki) -> None:
    ctx = server_context(pki.tls_config("revoked"), require_client_certificate=False)
    client = client_context(
        dataclasses.replace(
            pki.tls_config("peer"), crl_files=(pki.intermediate_crl_der, pki.root_crl_der)
        )
    )
    async with tls_server(ctx) as server:
        answer = await attempt(server.port, client, "localhost")
    assert "certificate revoked" in answer.lower()


@pytest.fixture(scope="module")
def stale_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """A PKI made 40 days ago: certificates still valid, CRLs past nextUpdate."""
    past = dt.datetime.now(dt.UTC) - CRL_LIFETIME - dt.timedelta(days=10)
    return generate_dev_pki(tmp_path_factory.mktemp("stale-pki"), PKI_HOSTNAME, now=past)


async def test_expired_crl_fails_closed(stale_pki: DevPki) -> None:
    ctx = server_context(
        stale_pki.tls_config("server", with_crls=False), require_client_certificate=True
    )
    async with tls_server(ctx) as server:
        without_crl = await attempt(
            server.port, client_context(stale_pki.tls_config("peer", with_crls=False))
        )
        with_crl = await attempt(server.port, client_context(stale_pki.tls_config("peer")))
    assert without_crl == f"OK {stale_pki.fingerprints['peer']}"
    assert "crl has expired" in with_crl.lower()

    # and a server holding the expired CRLs refuses every client certificate
    ctx = server_context(stale_pki.tls_config("server"), require_client_certificate=True)
    async with tls_server(ctx) as server:
        refused = await attempt(
            server.port, client_context(stale_pki.tls_config("peer", with_crls=False))
        )
        error = await server_error(server)
    assert refused.startswith("ERR")
    assert "crl has expired" in error


# --- context settings and errors --------------------------------------------------


def test_context_settings(pki: DevPki) -> None:
    server = server_context(pki.tls_config("server"), require_client_certificate=False)
    assert server.verify_mode == ssl.CERT_OPTIONAL
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.verify_flags & ssl.VERIFY_X509_STRICT
    assert server.verify_flags & ssl.VERIFY_CRL_CHECK_CHAIN == ssl.VERIFY_CRL_CHECK_CHAIN
    client = client_context(pki.tls_config("peer", with_crls=False, minimum_version="1.3"))
    assert client.check_hostname
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert client.minimum_version == ssl.TLSVersion.TLSv1_3
    assert not client.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    # only our anchors, never the system store
    assert {c["subject"][-1][0][1] for c in client.get_ca_certs()} == {
        "TEST AC RACINE IGC-SANTE ELEMENTAIRE",
        "TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS",
    }


def test_no_trust_anchors(pki: DevPki) -> None:
    bare = dataclasses.replace(pki.tls_config("server"), trust_anchors=(), crl_files=())
    assert server_context(bare, require_client_certificate=False).verify_mode == ssl.CERT_NONE
    with pytest.raises(TlsError, match="trust_anchors"):
        server_context(bare, require_client_certificate=True)
    with pytest.raises(TlsError, match="trust_anchors"):
        client_context(bare)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"certificate": Path("/nonexistent/server.pem")}, "certificate file not found"),
        ({"key": Path("/nonexistent/server.key")}, "private key file not found"),
        ({"trust_anchors": (Path("/nonexistent/ca.pem"),)}, "trust anchor file not found"),
        ({"crl_files": (Path("/nonexistent/crl.pem"),)}, "CRL file not found"),
        ({"minimum_version": "1.1"}, "minimum_version"),
        ({"certificate": None}, "tls.certificate and tls.key"),
    ],
)
def test_tls_errors_name_the_problem(pki: DevPki, change: dict[str, object], message: str) -> None:
    tls = dataclasses.replace(pki.tls_config("server"), **change)  # type: ignore[arg-type]
    with pytest.raises(TlsError, match=message) as info:
        server_context(tls, require_client_certificate=True)
    for value in change.values():
        if isinstance(value, Path):
            assert str(value) in str(info.value)
        elif isinstance(value, tuple):
            assert str(value[0]) in str(info.value)


def test_tls_errors_for_bad_content(pki: DevPki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a certificate\n")
    mismatched = dataclasses.replace(pki.tls_config("server"), key=pki.peer_key)
    with pytest.raises(TlsError, match="not a pair"):
        server_context(mismatched, require_client_certificate=True)
    for tls in (
        dataclasses.replace(pki.tls_config("server"), trust_anchors=(garbage,)),
        dataclasses.replace(pki.tls_config("server"), crl_files=(garbage,)),
    ):
        with pytest.raises(TlsError, match=re.escape(str(garbage))):
            client_context(tls)
    unreadable = tmp_path / "dir.pem"
    unreadable.mkdir()
    with pytest.raises(TlsError, match="unreadable"):
        client_context(dataclasses.replace(pki.tls_config("server"), crl_files=(unreadable,)))


# --- CRL freshness ----------------------------------------------------------------


def test_crl_status(pki: DevPki) -> None:
    tls = TlsConfig(
        certificate=None,
        key=None,
        trust_anchors=(pki.ca_bundle,),
        crl_files=(pki.crl, pki.intermediate_crl_der),
        minimum_version="1.2",
        crl_grace_seconds=24 * 3600,
    )
    generated = dt.datetime.fromisoformat(json.loads(pki.manifest.read_text())["generated"])
    fresh = crl_status(tls, generated)
    assert [(s.path, s.issuer) for s in fresh] == [
        (pki.crl, pki.subjects["intermediate-ca"]),
        (pki.crl, pki.subjects["root-ca"]),
        (pki.intermediate_crl_der, pki.subjects["intermediate-ca"]),
    ]
    next_update = generated + CRL_LIFETIME
    assert all(s.next_update == next_update.replace(microsecond=0) for s in fresh)
    assert not any(s.expired or s.stale for s in fresh)

    within_grace = crl_status(tls, next_update + dt.timedelta(hours=1))
    assert all(s.expired and not s.stale for s in within_grace)
    beyond_grace = crl_status(tls, next_update + dt.timedelta(days=1, seconds=1))
    assert all(s.expired and s.stale for s in beyond_grace)
    with pytest.raises(ValueError, match="aware"):
        crl_status(tls, dt.datetime(2030, 1, 1))
