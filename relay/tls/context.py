"""The one place where `ssl.SSLContext` objects are built.

Every listener and every outbound connection gets its context from `server_context`
or `client_context`, so the protocol floor, the trust anchors and the revocation
checks are the same everywhere.

Revocation: when `TlsConfig.crl_files` is not empty, contexts verify with
`VERIFY_CRL_CHECK_CHAIN`: OpenSSL then wants a CRL for *every* certificate of the
chain, root included, and fails the handshake ("unable to get certificate CRL") when
one is missing. That is deliberate (fail closed): configure the CRL of each CA of the
IGC-Santé chain, not only the issuing one. OpenSSL also refuses a CRL past its
nextUpdate ("CRL has expired"); the standard library gives no way to move the
verification time, so `crl_grace_seconds` cannot extend a CRL inside the handshake.
It is used by `crl_status`, which the CRL refresher and monitoring read to decide
when to alarm. Without CRL files no revocation check happens at all.

Built contexts load their files once; to pick up new CRLs build a new context and
swap it in (listeners apply it to new connections).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from relay.config.model import TlsConfig


class TlsError(Exception):
    """A TLS file is missing, unreadable or malformed, or the TLS settings are unusable.

    The message names the file or setting; it is meant for the operator (logs,
    `check-config`), never for a network peer.
    """


_VERSIONS: dict[str, ssl.TLSVersion] = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}

# TLS 1.2 suites: forward secrecy and AEAD only (ANSSI / Mozilla "intermediate"
# profile). TLS 1.3 suites are all AEAD and are left to OpenSSL's default.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"

_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


@dataclass(frozen=True, slots=True)
class CrlStatus:
    """Freshness of one CRL found in a configured CRL file.

    `expired`: past nextUpdate, so OpenSSL already refuses handshakes that need it.
    `stale`: past nextUpdate + `crl_grace_seconds` (or no nextUpdate at all): the
    deployment should alarm loudly.
    """

    path: Path
    issuer: str  # RFC 4514
    this_update: dt.datetime
    next_update: dt.datetime | None
    expired: bool
    stale: bool


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """The certificate a context presents: what `mss-relay status` shows, and what a
    reload compares to see that a file renewed at the same path is a new one."""

    sha256: str  # lower-case hex SHA-256 of the DER (as `dev-pki` prints it)
    subject: str  # RFC 4514
    not_after: dt.datetime


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def certificate_facts(path: Path) -> CertificateFacts:
    """The first certificate of a PEM chain file (the leaf); `TlsError` if none."""
    data = _read(path, "certificate")
    block = _PEM_CERT.search(data)
    if block is None:
        raise TlsError(f"certificate file holds no PEM certificate: {path}")
    try:
        cert = x509.load_pem_x509_certificate(block.group(0))
    except ValueError as exc:
        raise TlsError(f"certificate file malformed: {path}: {exc}") from None
    return CertificateFacts(
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
        subject=cert.subject.rfc4514_string(),
        not_after=cert.not_valid_after_utc,
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise TlsError(f"{what} file unreadable: {path}: {exc.strerror}") from None


def _minimum_version(tls: TlsConfig) -> ssl.TLSVersion:
    try:
        return _VERSIONS[tls.minimum_version]
    except KeyError:
        raise TlsError(
            f"tls.minimum_version must be one of {sorted(_VERSIONS)}, not {tls.minimum_version!r}"
        ) from None


def _load_crls(path: Path) -> tuple[bool, list[x509.CertificateRevocationList]]:
    """(is PEM, every CRL in `path`): PEM holds one or more, DER a single one."""
    data = _read(path, "CRL")
    try:
        if b"-----BEGIN" in data:
            blocks = _PEM_CRL.findall(data)
            if not blocks:
                raise TlsError(f"CRL file holds no PEM 'X509 CRL' block: {path}")
            return True, [x509.load_pem_x509_crl(block) for block in blocks]
        return False, [x509.load_der_x509_crl(data)]
    except ValueError as exc:
        raise TlsError(f"CRL file malformed: {path}: {exc}") from None


@contextlib.contextmanager
def _as_pem_file(path: Path) -> Iterator[Path]:
    """`path` itself if PEM, else a temporary PEM copy.

    OpenSSL's file lookup (`load_verify_locations(cafile=...)`) reads CRLs only from
    PEM; `cadata` only takes certificates. DER CRLs (what HTTP distribution points
    serve) are converted.
    """
    is_pem, crls = _load_crls(path)
    if is_pem:
        yield path
        return
    fd, name = tempfile.mkstemp(prefix="mss-relay-crl-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            for crl in crls:
                f.write(crl.public_bytes(serialization.Encoding.PEM))
        yield Path(name)
    finally:
        os.unlink(name)


def _configure_verification(ctx: ssl.SSLContext, tls: TlsConfig) -> None:
    for anchor in tls.trust_anchors:
        _read(anchor, "trust anchor")  # a clear message before OpenSSL's terse one
        try:
            ctx.load_verify_locations(cafile=anchor)
        except ssl.SSLError as exc:
            raise TlsError(f"trust anchor file malformed: {anchor}: {exc}") from None
    flags = ssl.VERIFY_X509_STRICT
    if tls.crl_files:
        for crl_file in tls.crl_files:
            with _as_pem_file(crl_file) as pem:
                try:
                    ctx.load_verify_locations(cafile=pem)
                except ssl.SSLError as exc:
                    raise TlsError(f"CRL file malformed: {crl_file}: {exc}") from None
        flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    ctx.verify_flags |= flags


def _load_own_certificate(ctx: ssl.SSLContext, tls: TlsConfig) -> None:
    if tls.certificate is None or tls.key is None:
        raise TlsError("tls.certificate and tls.key must both be set")
    _read(tls.certificate, "certificate")
    _read(tls.key, "private key")
    try:
        ctx.load_cert_chain(certfile=tls.certificate, keyfile=tls.key)
    except ssl.SSLError as exc:
        raise TlsError(
            f"certificate {tls.certificate} or key {tls.key} malformed or not a pair: {exc}"
        ) from None


def _harden(ctx: ssl.SSLContext, tls: TlsConfig) -> ssl.SSLContext:
    # Never below TLS 1.2 (MSSANTE.md), whatever the config says.
    ctx.minimum_version = _minimum_version(tls)
    ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def server_context(tls: TlsConfig, *, require_client_certificate: bool) -> ssl.SSLContext:
    """Context for a listener presenting our certificate.

    A client certificate is always requested when trust anchors are configured
    (CERT_OPTIONAL), so SASL EXTERNAL and certificate-based people work on
    submission and IMAP listeners; a certificate that is sent is verified like a
    required one (a bad one aborts the handshake). With `require_client_certificate`
    (inbound operator relay) a client without one is refused (CERT_REQUIRED).
    """
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), tls)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE
    _load_own_certificate(ctx, tls)
    if not tls.trust_anchors:
        if require_client_certificate:
            raise TlsError("a client certificate is required but tls.trust_anchors is empty")
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    _configure_verification(ctx, tls)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    return ctx


def client_context(tls: TlsConfig) -> ssl.SSLContext:
    """Context for outbound connections: verify the server against our trust anchors
    only (never the system store), check its name, present our certificate if set."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), tls)
    if not tls.trust_anchors:
        raise TlsError("tls.trust_anchors is empty: no server could be verified")
    if tls.certificate is not None or tls.key is not None:
        _load_own_certificate(ctx, tls)
    _configure_verification(ctx, tls)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    return ctx


def crl_status(tls: TlsConfig, now: dt.datetime) -> list[CrlStatus]:
    """Freshness of every CRL in `tls.crl_files`, in file order."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    grace = dt.timedelta(seconds=tls.crl_grace_seconds)
    result: list[CrlStatus] = []
    for path in tls.crl_files:
        for crl in _load_crls(path)[1]:
            next_update = crl.next_update_utc
            result.append(
                CrlStatus(
                    path=path,
                    issuer=crl.issuer.rfc4514_string(),
                    this_update=crl.last_update_utc,
                    next_update=next_update,
                    expired=next_update is None or now > next_update,
                    stale=next_update is None or now > next_update + grace,
                )
            )
    return result


class ListenerContext:
    """A listener's current server context, replaced when CRLs are refreshed.

    New connections get the newest context; open ones keep theirs. With implicit TLS
    asyncio holds on to the context the server was created with, so every handshake
    switches to the newest one from the SNI callback, which OpenSSL calls for each
    ClientHello (SSL_set_SSL_CTX: certificate and trust store, CRLs included).
    """

    def __init__(self, tls: TlsConfig, *, require_client_certificate: bool) -> None:
        self._require = require_client_certificate
        self.certificate: CertificateFacts | None = None  # what `current` presents
        self.current = self._build(tls)

    def _build(self, tls: TlsConfig) -> ssl.SSLContext:
        # Read before OpenSSL reads it: a file renewed in between shows as the newer
        # one at the next reload, never as a fingerprint the context does not serve.
        facts = certificate_facts(tls.certificate) if tls.certificate is not None else None
        ctx = server_context(tls, require_client_certificate=self._require)
        ctx.sni_callback = self._newest
        self.certificate = facts
        return ctx

    def replace(self, tls: TlsConfig) -> None:
        self.current = self._build(tls)

    def _newest(self, ssl_obj: ssl.SSLObject, _name: str | None, ctx: ssl.SSLContext) -> None:
        if ctx is not self.current:
            ssl_obj.context = self.current


def https_client_context(ca_file: Path | None) -> ssl.SSLContext:
    """For HTTPS to the token issuer (discovery, JWKS, introspection): the web PKI
    (the system's CAs), or the CA file the config names; host name checked, TLS ≥ 1.2.
    Not IGC-Santé: Pro Santé Connect's endpoints carry ordinary web certificates."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
