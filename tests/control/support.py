"""Helpers for the control socket tests: the CLI as a subprocess, a renewed server
certificate, the certificate a TLS server presents."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relay.tls.pki import DevPki


async def cli(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`mss-relay ARGS` as a real process (the daemon may run in this one's loop)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "relay.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


async def cli_json(command: str, config: Path, *extra: str) -> dict[str, Any]:
    done = await cli(command, "--config", config, "--json", *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def renew_server_certificate(pki: DevPki, cert: Path, key: Path) -> str:
    """A new `localhost` certificate from the dev intermediate CA written over
    `cert` and `key` (a renewal at the same paths); its SHA-256 fingerprint."""
    ca_cert = x509.load_pem_x509_certificate(pki.intermediate_ca.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.intermediate_ca_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    new_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(new_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key.write_bytes(
        new_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + ca_cert.public_bytes(serialization.Encoding.PEM)
    )
    return leaf.fingerprint(hashes.SHA256()).hex()


def presented_fingerprint(sock: ssl.SSLSocket) -> str:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def implicit_tls_fingerprint(port: int, ca_bundle: Path) -> str:
    """Connect with TLS to 127.0.0.1:`port` (verifying against the dev CA for the
    name localhost); the certificate the server presented."""
    ctx = ssl.create_default_context(cafile=str(ca_bundle))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return presented_fingerprint(tls)


def refused(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def revoke_in_crl_file(pki: DevPki, crl_file: Path, cert_file: Path) -> None:
    """Rewrite `crl_file` (the dev PKI's PEM CRLs) with a newer intermediate CRL
    (number 2) that also revokes the first certificate of `cert_file`."""
    ca_cert = x509.load_pem_x509_certificate(pki.intermediate_ca.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.intermediate_ca_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    target = x509.load_pem_x509_certificate(cert_file.read_bytes())
    data = crl_file.read_bytes()
    blocks = re.findall(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", data, re.DOTALL)
    crls = [x509.load_pem_x509_crl(b) for b in blocks]
    old = next(c for c in crls if c.issuer == ca_cert.subject)
    others = [c for c in crls if c.issuer != ca_cert.subject]
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(now + dt.timedelta(days=30))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.CRLNumber(2), critical=False)
    )
    serials = [r.serial_number for r in old] + [target.serial_number]
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
    new = builder.sign(ca_key, hashes.SHA256())
    crl_file.write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [*others, new])
    )
