"""The dev PKI: files, names, extensions, and agreement with the openssl CLI."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relay.tls.pki import (
    CRL_DISTRIBUTION_URL,
    INTERMEDIATE_DN,
    ROOT_DN,
    DevPki,
    generate_dev_pki,
)
from tests.tls.conftest import PKI_HOSTNAME

LEAVES = ("server", "peer", "revoked", "expired", "rogue", "person-martin", "person-dupont")


def first_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def test_hierarchy_names(pki: DevPki) -> None:
    root = first_cert(pki.root_ca)
    inter = first_cert(pki.intermediate_ca)
    assert root.subject.rfc4514_string() == ROOT_DN == root.issuer.rfc4514_string()
    assert inter.subject.rfc4514_string() == INTERMEDIATE_DN
    assert inter.issuer == root.subject
    server = first_cert(pki.server_cert)
    assert server.subject.rfc4514_string() == f"CN={PKI_HOSTNAME},O=OPERATEUR DEMO TEST,C=FR"
    assert pki.subjects["peer"] == "CN=peer.localhost,O=OPERATEUR PAIR TEST,C=FR"
    assert first_cert(pki.rogue_cert).issuer != inter.subject


def test_chain_files(pki: DevPki) -> None:
    chain = x509.load_pem_x509_certificates(pki.server_cert.read_bytes())
    assert [c.subject.rfc4514_string() for c in chain] == [pki.subjects["server"], INTERMEDIATE_DN]
    bundle = x509.load_pem_x509_certificates(pki.ca_bundle.read_bytes())
    assert [c.subject.rfc4514_string() for c in bundle] == [ROOT_DN, INTERMEDIATE_DN]


def test_keys_are_private_ec_p256(pki: DevPki) -> None:
    keys = sorted(pki.directory.glob("*.key"))
    assert len(keys) == 3 + 5 + 3  # CAs incl. rogue, leaves, people
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for name in LEAVES:
        public = first_cert(pki.cert_and_key(name)[0]).public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.curve.name == "secp256r1"


def test_leaf_extensions(pki: DevPki) -> None:
    for name in LEAVES:
        cert = first_cert(pki.cert_and_key(name)[0])
        ext = cert.extensions
        dp = ext.get_extension_for_class(x509.CRLDistributionPoints).value
        assert dp[0].full_name == [x509.UniformResourceIdentifier(CRL_DISTRIBUTION_URL)]
        assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
        assert ext.get_extension_for_class(x509.KeyUsage).critical
        aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier is not None
        ext.get_extension_for_class(x509.SubjectKeyIdentifier)
        usages = set(ext.get_extension_for_class(x509.ExtendedKeyUsage).value)
        if name.startswith("person-"):
            assert usages == {ExtendedKeyUsageOID.CLIENT_AUTH}
        else:
            assert usages == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = first_cert(pki.server_cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == [PKI_HOSTNAME, "localhost"]
    assert [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_people_carry_rpps(pki: DevPki) -> None:
    martin = first_cert(pki.people["martin"][0]).subject
    assert martin.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "810001234567"
    assert martin.get_attributes_for_oid(NameOID.SURNAME)[0].value == "MARTIN"
    dupont = first_cert(pki.people["dupont"][0]).subject
    assert dupont.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dupont"


def test_validity(pki: DevPki) -> None:
    now = dt.datetime.now(dt.UTC)
    assert first_cert(pki.expired_cert).not_valid_after_utc < now
    for name in LEAVES:
        if name != "expired":
            cert = first_cert(pki.cert_and_key(name)[0])
            assert cert.not_valid_before_utc < now < cert.not_valid_after_utc


def test_crls(pki: DevPki) -> None:
    pem = pki.crl.read_bytes()
    assert pem.count(b"-----BEGIN X509 CRL-----") == 2
    inter_crl = x509.load_der_x509_crl(pki.intermediate_crl_der.read_bytes())
    root_crl = x509.load_der_x509_crl(pki.root_crl_der.read_bytes())
    revoked = first_cert(pki.revoked_cert)
    assert inter_crl.get_revoked_certificate_by_serial_number(revoked.serial_number)
    server_serial = first_cert(pki.server_cert).serial_number
    assert inter_crl.get_revoked_certificate_by_serial_number(server_serial) is None
    assert len(root_crl) == 0
    inter_key = first_cert(pki.intermediate_ca).public_key()
    root_key = first_cert(pki.root_ca).public_key()
    assert isinstance(inter_key, ec.EllipticCurvePublicKey)
    assert isinstance(root_key, ec.EllipticCurvePublicKey)
    assert inter_crl.is_signature_valid(inter_key)
    assert root_crl.is_signature_valid(root_key)
    assert not inter_crl.is_signature_valid(root_key)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
@pytest.mark.parametrize("name", ["server", "person-martin", "root-ca"])
def test_manifest_fingerprint_matches_openssl(pki: DevPki, name: str) -> None:
    manifest = json.loads(pki.manifest.read_text())
    entry = manifest["certificates"][name]
    out = subprocess.run(
        [
            "openssl",
            "x509",
            "-in",
            pki.directory / entry["certificate"],
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    # "sha256 Fingerprint=AB:CD:..."
    openssl_hex = out.strip().split("=", 1)[1].replace(":", "").lower()
    assert entry["sha256"] == openssl_hex == pki.fingerprints[name]
    assert entry["subject"] == pki.subjects[name]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("server", None),
        ("person-leroy", None),
        ("revoked", "certificate revoked"),
        ("expired", "certificate has expired"),
        ("rogue", "unable to get local issuer certificate"),
    ],
)
def test_openssl_verify_strict_with_crls(pki: DevPki, name: str, error: str | None) -> None:
    """The chain and CRLs satisfy OpenSSL's X509_STRICT checks with CRL_CHECK_ALL."""
    result = subprocess.run(
        [
            "openssl", "verify", "-x509_strict", "-crl_check_all",
            "-CAfile", str(pki.ca_bundle), "-CRLfile", str(pki.crl),
            "-untrusted", str(pki.intermediate_ca), str(pki.cert_and_key(name)[0]),
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if error is None:
        assert result.returncode == 0, result.stdout + result.stderr
    else:
        assert result.returncode != 0
        assert error in result.stdout + result.stderr


def test_regenerating_keeps_keys_private(tmp_path: Path) -> None:
    key = tmp_path / "server.key"
    key.write_bytes(b"old")
    key.chmod(0o644)
    first = generate_dev_pki(tmp_path, "localhost", people=())
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert first.people == {}
    san = first_cert(first.server_cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost"]
    second = generate_dev_pki(tmp_path, "localhost", people=())
    assert second.fingerprints["server"] != first.fingerprints["server"]


def test_naive_now_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="aware"):
        generate_dev_pki(tmp_path, "localhost", now=dt.datetime(2030, 1, 1))
