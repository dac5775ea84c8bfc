"""Autoconfig and Autodiscover over real HTTP and HTTPS with curl; `mss-relay
dns-records` as a subprocess."""

from __future__ import annotations

import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.config.model import StorageConfig
from relay.tls.pki import DevPki
from tests.harness import DOMAIN, MARTIN_BOX, SHARED, RunningDaemon, daemon_running, free_ports
from tests.web.conftest import curl, http_listener
from tests.web.test_autoconfig import BILLION_LAUGHS, Server, protocols, read_config_v11, request


@pytest.fixture
async def two(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> AsyncIterator[RunningDaemon]:
    """A loopback HTTP listener serving everything, and an HTTPS one serving only
    autoconfig (what a public listener would)."""
    plain, tls = free_ports(2)
    extra = http_listener(plain) + http_listener(tls, tls="implicit", endpoints='["autoconfig"]')
    async with daemon_running(tmp_path, dev_pki, storage, extra=extra) as running:
        running.ports.update(http=plain, https=tls)
        yield running


def autoconfig_url(
    d: RunningDaemon,
    address: str | None,
    path: str = "/.well-known/autoconfig/mail/config-v1.1.xml",
) -> str:
    query = "" if address is None else "?emailaddress=" + urllib.parse.quote(address)
    return f"http://127.0.0.1:{d.ports['http']}{path}{query}"


async def test_thunderbird_autoconfig_for_a_person(two: RunningDaemon) -> None:
    d = two
    status, head, body = await curl(autoconfig_url(d, MARTIN_BOX))
    assert status == 200
    assert "content-type: application/xml" in head.lower()
    provider, domains, servers = read_config_v11(body.encode())
    assert provider == DOMAIN and domains == [DOMAIN]
    p = d.ports
    assert servers == [
        Server(
            "incoming", "imap", "localhost", p["imap-tls"], "SSL", "martin", ("password-cleartext",)
        ),
        Server(
            "incoming",
            "imap",
            "localhost",
            p["imap"],
            "STARTTLS",
            "martin",
            ("password-cleartext",),
        ),
        Server(
            "outgoing",
            "smtp",
            "localhost",
            p["submission-tls"],
            "SSL",
            "martin",
            ("password-cleartext",),
        ),
        Server(
            "outgoing",
            "smtp",
            "localhost",
            p["submission"],
            "STARTTLS",
            "martin",
            ("password-cleartext",),
        ),
    ]


async def test_shared_and_unknown_addresses_look_alike(two: RunningDaemon) -> None:
    bodies = set()
    for address in (SHARED, f"nobody@{DOMAIN}", f"dupont*{SHARED}"):
        status, _, body = await curl(autoconfig_url(two, address, path="/mail/config-v1.1.xml"))
        assert status == 200
        bodies.add(body)
    (body,) = bodies
    _, _, servers = read_config_v11(body.encode())
    assert {s.username for s in servers} == {"%EMAILADDRESS%"}
    # no address: the domain from the autoconfig.<domain> host name
    status, _, body = await curl(
        "-H", f"Host: autoconfig.{DOMAIN}", autoconfig_url(two, None, path="/mail/config-v1.1.xml")
    )
    assert status == 200 and read_config_v11(body.encode())[0] == DOMAIN
    status, _, _ = await curl(autoconfig_url(two, "someone@elsewhere.example"))
    assert status == 404


async def test_autodiscover_post(two: RunningDaemon) -> None:
    url = f"http://127.0.0.1:{two.ports['http']}/autodiscover/autodiscover.xml"
    status, head, body = await curl(
        "-H", "Content-Type: text/xml", "--data-binary", request(MARTIN_BOX).decode(), url
    )
    assert status == 200 and "application/xml" in head.lower()
    got = protocols(body.encode())
    assert [(p["Type"], p["Port"], p["Encryption"], p["LoginName"]) for p in got] == [
        ("IMAP", str(two.ports["imap-tls"]), "SSL", "martin"),
        ("SMTP", str(two.ports["submission-tls"]), "SSL", "martin"),
    ]
    # Outlook's capitalised path too
    status, _, _ = await curl(
        "--data-binary",
        request(MARTIN_BOX).decode(),
        url.replace("autodiscover/autodiscover", "Autodiscover/Autodiscover"),
    )
    assert status == 200


async def test_autodiscover_hostile_and_oversized_bodies(
    two: RunningDaemon, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{two.ports['http']}/autodiscover/autodiscover.xml"
    bomb = tmp_path / "bomb.xml"
    bomb.write_bytes(BILLION_LAUGHS)
    status, _, body = await curl("--data-binary", f"@{bomb}", url)
    assert status == 200 and "<ErrorCode>600</ErrorCode>" in body and "DOCTYPE" in body
    big = tmp_path / "big.xml"
    big.write_bytes(b"<a>" + b"x" * 100_000 + b"</a>")
    status, _, _ = await curl("--data-binary", f"@{big}", url)
    assert status == 413
    status, _, _ = await curl(url)  # GET: Autodiscover is POST only
    assert status == 405


async def test_https_listener_serves_only_what_it_lists(two: RunningDaemon) -> None:
    d = two
    base = f"https://localhost:{d.ports['https']}"
    ca = ["--cacert", str(d.pki.ca_bundle), "--resolve", f"localhost:{d.ports['https']}:127.0.0.1"]
    status, _, body = await curl(*ca, f"{base}/mail/config-v1.1.xml?emailaddress={MARTIN_BOX}")
    assert status == 200 and read_config_v11(body.encode())[2][0].username == "martin"
    for path in ("/metrics", "/healthz"):
        status, _, _ = await curl(*ca, base + path)
        assert status == 404


def test_dns_records_command(tmp_path: Path, dev_pki: DevPki) -> None:
    from tests.harness import write_config

    ports = dict(
        zip(
            ("submission", "submission-tls", "inbound", "imap", "imap-tls"),
            (587, 465, 25, 143, 993),
            strict=True,
        )
    )
    storage = StorageConfig(url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", key_file=tmp_path / "k")
    path = write_config(tmp_path, dev_pki, storage, ports, extra=http_listener(8025))
    done = subprocess.run(
        [sys.executable, "-m", "relay.cli", "dns-records", "--config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"_imaps._tcp.{DOMAIN}. 3600 IN SRV 0 1 993 localhost." in done.stdout
    assert f"_submission._tcp.{DOMAIN}. 3600 IN SRV 10 1 587 localhost." in done.stdout
    assert f"autoconfig.{DOMAIN}. 3600 IN CNAME localhost." in done.stdout
    missing = str(tmp_path / "missing.toml")
    bad = subprocess.run(
        [sys.executable, "-m", "relay.cli", "dns-records", "--config", missing],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "cannot read" in bad.stderr and "Traceback" not in bad.stderr
