"""A development PKI shaped like the IGC-Santé TEST hierarchy.

`generate_dev_pki` writes, in one folder, a root and an intermediate CA named like the
IGC-Santé TEST ones (MSSANTE.md), CRLs for both, a server certificate, a second
operator's certificate, people's client certificates, and the broken certificates the
tests need (revoked, expired, issued by a rogue CA). Keys are EC P-256 so the whole
set is made in milliseconds; the real IGC-Santé issues RSA, which changes nothing for
the code that consumes these files.

Never use this output outside tests and the demo: the CA keys sit next to the
certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relay.config.model import TlsConfig

ROOT_DN = (
    "CN=TEST AC RACINE IGC-SANTE ELEMENTAIRE,OU=IGC-SANTE TEST,OU=0002 187512751,O=ASIP-SANTE,C=FR"
)
INTERMEDIATE_DN = (
    "CN=TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS,OU=IGC-SANTE TEST,"
    "OU=0002 187512751,O=ASIP-SANTE,C=FR"
)
# Looks like the real root at a glance ("ASIP SANTE" without the hyphen, no OU with
# the SIREN): what a careless string comparison would let through.
ROGUE_CA_DN = "CN=TEST AC RACINE IGC-SANTE ELEMENTAIRE,OU=IGC-SANTE TEST,O=ASIP SANTE,C=FR"

CRL_DISTRIBUTION_URL = "http://127.0.0.1:8080/intermediate.crl"
ROOT_CRL_DISTRIBUTION_URL = "http://127.0.0.1:8080/root.crl"

DEFAULT_PEOPLE: tuple[tuple[str, str], ...] = (
    ("martin", "10001234567"),
    ("dupont", ""),
    ("leroy", "10009876543"),
)

_CA_LIFETIME = dt.timedelta(days=3650)
_LEAF_LIFETIME = dt.timedelta(days=730)
# Certificates start a little in the past so a peer whose clock is slightly behind
# still accepts them.
_BACKDATE = dt.timedelta(minutes=10)
CRL_LIFETIME = dt.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class DevPki:
    """Where `generate_dev_pki` wrote each file, and what it holds.

    `fingerprints` and `subjects` are keyed by certificate name ("root-ca",
    "intermediate-ca", "server", "peer", "revoked", "expired", "rogue-ca", "rogue",
    "person-<id>"); fingerprints are lower-case hex SHA-256 of the DER encoding, the
    form `Person.certificate_fingerprints` uses.
    """

    directory: Path
    root_ca: Path
    root_ca_key: Path
    intermediate_ca: Path
    intermediate_ca_key: Path
    ca_bundle: Path
    crl: Path
    intermediate_crl_der: Path
    root_crl_der: Path
    server_cert: Path
    server_key: Path
    peer_cert: Path
    peer_key: Path
    revoked_cert: Path
    revoked_key: Path
    expired_cert: Path
    expired_key: Path
    rogue_ca: Path
    rogue_ca_key: Path
    rogue_cert: Path
    rogue_key: Path
    people: Mapping[str, tuple[Path, Path]]  # person id -> (certificate, key)
    manifest: Path
    hostname: str
    fingerprints: Mapping[str, str]
    subjects: Mapping[str, str]  # RFC 4514 subject DN of each certificate

    def cert_and_key(self, name: str) -> tuple[Path, Path]:
        """The (certificate chain, key) files of a named certificate."""
        if name.startswith("person-"):
            return self.people[name.removeprefix("person-")]
        table = {
            "server": (self.server_cert, self.server_key),
            "peer": (self.peer_cert, self.peer_key),
            "revoked": (self.revoked_cert, self.revoked_key),
            "expired": (self.expired_cert, self.expired_key),
            "rogue": (self.rogue_cert, self.rogue_key),
        }
        return table[name]

    def tls_config(
        self,
        name: str | None = "server",
        *,
        with_crls: bool = True,
        minimum_version: str = "1.2",
        crl_grace_seconds: int = 24 * 3600,
    ) -> TlsConfig:
        """A `TlsConfig` presenting certificate `name` (None: no certificate) and
        trusting the dev root and intermediate."""
        cert: Path | None = None
        key: Path | None = None
        if name is not None:
            cert, key = self.cert_and_key(name)
        return TlsConfig(
            certificate=cert,
            key=key,
            trust_anchors=(self.ca_bundle,),
            crl_files=(self.crl,) if with_crls else (),
            minimum_version=minimum_version,
            crl_grace_seconds=crl_grace_seconds,
        )


def _parse_dn(dn: str) -> x509.Name:
    # Only for the fixed, escape-free DNs above: split on commas. RFC 4514 strings
    # list the most specific RDN first; x509.Name wants DER order (C first).
    oids = {"CN": NameOID.COMMON_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME}
    oids |= {"O": NameOID.ORGANIZATION_NAME, "C": NameOID.COUNTRY_NAME}
    attributes = []
    for part in dn.split(","):
        key, value = part.split("=", 1)
        attributes.append(x509.NameAttribute(oids[key], value))
    return x509.Name(list(reversed(attributes)))


def _name(*pairs: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in pairs])


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True, slots=True)
class _Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _ca(
    subject: x509.Name,
    *,
    issuer: _Issued | None,
    now: dt.datetime,
    path_length: int | None,
    crl_url: str | None = None,
) -> _Issued:
    key = _new_key()
    signer_key = issuer.key if issuer else key
    issuer_name = issuer.cert.subject if issuer else subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _CA_LIFETIME)
        # RFC 5280 §4.2.1.9: critical basicConstraints on CA certificates.
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        # RFC 5280 §4.2.1.3: keyCertSign and cRLSign for a CA that signs both.
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
            critical=False,
        )
    )
    if crl_url is not None:
        builder = builder.add_extension(_crl_dp(crl_url), critical=False)
    return _Issued(builder.sign(signer_key, hashes.SHA256()), key)


def _crl_dp(url: str) -> x509.CRLDistributionPoints:
    # RFC 5280 §4.2.1.13
    return x509.CRLDistributionPoints(
        [
            x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(url)],
                relative_name=None,
                reasons=None,
                crl_issuer=None,
            )
        ]
    )


def _leaf(
    subject: x509.Name,
    *,
    issuer: _Issued,
    not_before: dt.datetime,
    not_after: dt.datetime,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    server: bool,
) -> _Issued:
    key = _new_key()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # ECDHE + ECDSA: the key signs the handshake, nothing else.
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
        .add_extension(_crl_dp(CRL_DISTRIBUTION_URL), critical=False)
    )
    general_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    general_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    if general_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(general_names), critical=False)
    return _Issued(builder.sign(issuer.key, hashes.SHA256()), key)


def _crl(
    issuer: _Issued, *, now: dt.datetime, revoked: Sequence[x509.Certificate]
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + CRL_LIFETIME)
        # RFC 5280 §5.2.1 and §5.2.3: AKI and CRL number are required in a CRL.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
        .add_extension(x509.CRLNumber(1), critical=False)
    )
    for cert in revoked:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - _BACKDATE)
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
            .build()
        )
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(issuer.key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        # An existing file keeps its mode through O_CREAT: set it explicitly.
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(path, data, private=True)


def fingerprint(cert: x509.Certificate) -> str:
    """Lower-case hex SHA-256 of the certificate's DER encoding."""
    return cert.fingerprint(hashes.SHA256()).hex()


def generate_dev_pki(
    directory: Path,
    hostname: str,
    *,
    people: Sequence[tuple[str, str]] = DEFAULT_PEOPLE,
    now: dt.datetime | None = None,
) -> DevPki:
    """Write a complete test PKI into `directory` (created if missing).

    `people` lists (person id, RPPS or "") pairs, one client certificate each. `now`
    (default: the current time) anchors every validity period and CRL date, so a
    test can make a PKI whose CRLs are already past nextUpdate.
    """
    if now is None:
        now = dt.datetime.now(dt.UTC)
    elif now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    directory.mkdir(parents=True, exist_ok=True)
    d = directory

    root = _ca(_parse_dn(ROOT_DN), issuer=None, now=now, path_length=1)
    inter = _ca(
        _parse_dn(INTERMEDIATE_DN),
        issuer=root,
        now=now,
        path_length=0,
        crl_url=ROOT_CRL_DISTRIBUTION_URL,
    )
    valid_from, valid_to = now - _BACKDATE, now + _LEAF_LIFETIME
    loopback = ("localhost",)
    ips = ("127.0.0.1",)

    leaves: dict[str, _Issued] = {}
    leaves["server"] = _leaf(
        _name(
            (NameOID.COUNTRY_NAME, "FR"),
            (NameOID.ORGANIZATION_NAME, "OPERATEUR DEMO TEST"),
            (NameOID.COMMON_NAME, hostname),
        ),
        issuer=inter,
        not_before=valid_from,
        not_after=valid_to,
        dns_names=(hostname, *loopback) if hostname != "localhost" else loopback,
        ip_addresses=ips,
        server=True,
    )
    leaves["peer"] = _leaf(
        _name(
            (NameOID.COUNTRY_NAME, "FR"),
            (NameOID.ORGANIZATION_NAME, "OPERATEUR PAIR TEST"),
            (NameOID.COMMON_NAME, "peer.localhost"),
        ),
        issuer=inter,
        not_before=valid_from,
        not_after=valid_to,
        dns_names=("peer.localhost", *loopback),
        ip_addresses=ips,
        server=True,
    )
    leaves["revoked"] = _leaf(
        _name(
            (NameOID.COUNTRY_NAME, "FR"),
            (NameOID.ORGANIZATION_NAME, "OPERATEUR REVOQUE TEST"),
            (NameOID.COMMON_NAME, "revoked.localhost"),
        ),
        issuer=inter,
        not_before=valid_from,
        not_after=valid_to,
        dns_names=loopback,
        ip_addresses=ips,
        server=True,
    )
    leaves["expired"] = _leaf(
        _name(
            (NameOID.COUNTRY_NAME, "FR"),
            (NameOID.ORGANIZATION_NAME, "OPERATEUR EXPIRE TEST"),
            (NameOID.COMMON_NAME, "expired.localhost"),
        ),
        issuer=inter,
        not_before=now - dt.timedelta(days=400),
        not_after=now - dt.timedelta(days=1),
        dns_names=loopback,
        ip_addresses=ips,
        server=True,
    )
    rogue_ca = _ca(_parse_dn(ROGUE_CA_DN), issuer=None, now=now, path_length=0)
    leaves["rogue"] = _leaf(
        _name(
            (NameOID.COUNTRY_NAME, "FR"),
            (NameOID.ORGANIZATION_NAME, "OPERATEUR DEMO TEST"),
            (NameOID.COMMON_NAME, hostname),
        ),
        issuer=rogue_ca,
        not_before=valid_from,
        not_after=valid_to,
        dns_names=(hostname, *loopback) if hostname != "localhost" else loopback,
        ip_addresses=ips,
        server=True,
    )
    for person_id, rpps in people:
        # IGC-Santé person certificates carry the national identifier in the CN:
        # "8" (RPPS identifier type) followed by the 11-digit RPPS.
        cn = f"8{rpps}" if rpps else person_id
        leaves[f"person-{person_id}"] = _leaf(
            _name(
                (NameOID.COUNTRY_NAME, "FR"),
                (NameOID.ORGANIZATION_NAME, "STRUCTURE DEMO TEST"),
                (NameOID.SURNAME, person_id.upper()),
                (NameOID.GIVEN_NAME, "TEST"),
                (NameOID.COMMON_NAME, cn),
            ),
            issuer=inter,
            not_before=valid_from,
            not_after=valid_to,
            server=False,
        )

    inter_crl = _crl(inter, now=now, revoked=[leaves["revoked"].cert])
    root_crl = _crl(root, now=now, revoked=[])

    paths: dict[str, Path] = {}
    all_certs: dict[str, x509.Certificate] = {
        "root-ca": root.cert,
        "intermediate-ca": inter.cert,
        "rogue-ca": rogue_ca.cert,
    }
    for name, issued in (("root-ca", root), ("intermediate-ca", inter), ("rogue-ca", rogue_ca)):
        paths[name] = d / f"{name}.pem"
        _write(paths[name], _pem(issued.cert))
        _write_key(d / f"{name}.key", issued.key)
    for name, issued in leaves.items():
        all_certs[name] = issued.cert
        paths[name] = d / f"{name}.pem"
        # The chain a peer presents: leaf, then the intermediate (never the root).
        chain = _pem(issued.cert) if name == "rogue" else _pem(issued.cert) + _pem(inter.cert)
        _write(paths[name], chain)
        _write_key(d / f"{name}.key", issued.key)

    _write(d / "ca-bundle.pem", _pem(root.cert) + _pem(inter.cert))
    _write(
        d / "crl.pem",
        inter_crl.public_bytes(serialization.Encoding.PEM)
        + root_crl.public_bytes(serialization.Encoding.PEM),
    )
    _write(d / "intermediate-crl.der", inter_crl.public_bytes(serialization.Encoding.DER))
    _write(d / "root-crl.der", root_crl.public_bytes(serialization.Encoding.DER))

    fingerprints = {name: fingerprint(cert) for name, cert in all_certs.items()}
    subjects = {name: cert.subject.rfc4514_string() for name, cert in all_certs.items()}
    # File names are relative to the manifest's folder, so the folder can be moved.
    manifest = {
        "hostname": hostname,
        "generated": now.isoformat(),
        "ca_bundle": "ca-bundle.pem",
        "crl": "crl.pem",
        "intermediate_crl_der": "intermediate-crl.der",
        "root_crl_der": "root-crl.der",
        "certificates": {
            name: {
                "certificate": paths[name].name,
                "key": f"{name}.key",
                "subject": subjects[name],
                "issuer": all_certs[name].issuer.rfc4514_string(),
                "sha256": fingerprints[name],
                "not_after": all_certs[name].not_valid_after_utc.isoformat(),
            }
            for name in all_certs
        },
    }
    _write(d / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False).encode())

    return DevPki(
        directory=d,
        root_ca=paths["root-ca"],
        root_ca_key=d / "root-ca.key",
        intermediate_ca=paths["intermediate-ca"],
        intermediate_ca_key=d / "intermediate-ca.key",
        ca_bundle=d / "ca-bundle.pem",
        crl=d / "crl.pem",
        intermediate_crl_der=d / "intermediate-crl.der",
        root_crl_der=d / "root-crl.der",
        server_cert=paths["server"],
        server_key=d / "server.key",
        peer_cert=paths["peer"],
        peer_key=d / "peer.key",
        revoked_cert=paths["revoked"],
        revoked_key=d / "revoked.key",
        expired_cert=paths["expired"],
        expired_key=d / "expired.key",
        rogue_ca=paths["rogue-ca"],
        rogue_ca_key=d / "rogue-ca.key",
        rogue_cert=paths["rogue"],
        rogue_key=d / "rogue.key",
        people={pid: (paths[f"person-{pid}"], d / f"person-{pid}.key") for pid, _ in people},
        manifest=d / "manifest.json",
        hostname=hostname,
        fingerprints=fingerprints,
        subjects=subjects,
    )
