"""The control socket over its real interface: the daemon running (in this process,
on real sockets), `mss-relay status / who / kick / reload` run as subprocesses
against its socket. Both engines (kick and reload write the audit trail)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import imaplib
import json
import os
import shutil
import smtplib
import socket
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.config.model import StorageConfig
from relay.control.paths import SOCKET_NAME
from relay.control.server import StartError
from relay.store.store import AuditFilter
from relay.tls.pki import DevPki
from tests.control.support import (
    cli,
    cli_json,
    implicit_tls_fingerprint,
    presented_fingerprint,
    refused,
    renew_server_certificate,
    revoke_in_crl_file,
)
from tests.harness import PASSWORDS, RunningDaemon, free_ports, start_daemon


@pytest.fixture
async def running(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> AsyncIterator[RunningDaemon]:
    """A daemon whose certificate and key are its own copies (a test renews them)."""
    own = tmp_path / "own-tls"
    own.mkdir()
    cert, key = own / "server.pem", own / "server.key"
    crl = own / "crl.pem"
    shutil.copy(dev_pki.server_cert, cert)
    shutil.copy(dev_pki.server_key, key)
    shutil.copy(dev_pki.crl, crl)
    os.chmod(key, 0o600)
    pki = dataclasses.replace(dev_pki, server_cert=cert, server_key=key, crl=crl)
    d = await start_daemon(tmp_path, pki, storage)
    try:
        yield d
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)


def imap_login(d: RunningDaemon, person: str, box: str | None = None) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL(
        "localhost", d.ports["imap-tls"], ssl_context=d.client_context(), timeout=10
    )
    client.login(f"{person}*{box}" if box else person, PASSWORDS[person])
    return client


def ehlo(port: int) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        return s.ehlo("x")[0]


def smtp_login(d: RunningDaemon, person: str) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=10)
    s.starttls(context=d.client_context())
    s.login(person, PASSWORDS[person])
    return s


def starttls_fingerprint(d: RunningDaemon) -> str:
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=10) as s:
        s.starttls(context=d.client_context())
        return presented_fingerprint(s.sock)  # type: ignore[arg-type]


def imap_starttls_login(d: RunningDaemon, port: int, person: str) -> None:
    imap = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    imap.starttls(d.client_context())
    imap.login(person, PASSWORDS[person])
    imap.logout()


async def audit(d: RunningDaemon, action: str) -> list[dict[str, object]]:
    rows = await d.store.audit_rows(AuditFilter(action=action))
    return [{"person": r.person, "box": r.box, **json.loads(r.data)["details"]} for r in rows]


async def test_status_names_listeners_certificates_and_the_socket_is_0600(
    running: RunningDaemon,
) -> None:
    d = running
    sock = d.runtime.config.server.data_dir / SOCKET_NAME
    mode = os.stat(sock).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600

    client = await asyncio.to_thread(imap_login, d, "dupont")
    try:
        status = await cli_json("status", d.config_path)
        text = await cli("status", "--config", d.config_path)
    finally:
        await asyncio.to_thread(client.logout)
    assert text.returncode == 0, text.stderr
    fingerprint = d.pki.fingerprints["server"]
    by_port = {int(lst["address"].rsplit(":", 1)[1]): lst for lst in status["listeners"]}
    assert set(by_port) == set(d.ports.values())
    for lst in by_port.values():
        assert lst["serving"] is True
        assert lst["certificate"]["sha256"] == fingerprint
        assert fingerprint in text.stdout
    assert by_port[d.ports["imap-tls"]]["sessions"] == 1
    assert by_port[d.ports["imap"]]["sessions"] == 0
    assert status["queue_depth"] == 0 and status["queue_oldest_age_seconds"] is None
    assert status["audit_rows"] >= 2
    assert status["last_anchor"]["reason"] == "start"
    assert [c["stale"] for c in status["crls"]] == [False, False]  # root and intermediate
    assert status["issuer"] is None  # none configured here
    assert "queue: 0 waiting" in text.stdout
    assert f"127.0.0.1:{d.ports['imap-tls']}" in text.stdout


async def test_who_lists_sessions_and_kick_cuts_them_audited(running: RunningDaemon) -> None:
    d = running
    dupont = await asyncio.to_thread(imap_login, d, "dupont", "secretariat@cpts-demo.mssante.fr")
    martin = await asyncio.to_thread(imap_login, d, "martin")
    smtp = await asyncio.to_thread(smtp_login, d, "dupont")
    try:
        who = await cli_json("who", d.config_path)
        sessions = {(s["protocol"], s["person"]): s for s in who["sessions"]}
        assert set(sessions) == {("imap", "dupont"), ("imap", "martin"), ("smtp", "dupont")}
        imap_dupont = sessions[("imap", "dupont")]
        assert imap_dupont["box"] == "secretariat@cpts-demo.mssante.fr"
        assert imap_dupont["client"] == "127.0.0.1"
        assert imap_dupont["tls"] in ("TLSv1.2", "TLSv1.3")
        assert sessions[("smtp", "dupont")]["tls"] in ("TLSv1.2", "TLSv1.3")  # after STARTTLS

        kicked = await cli("kick", "dupont", "--config", d.config_path)
        assert kicked.returncode == 0, kicked.stderr
        assert "1 IMAP and 1 SMTP sessions cut" in kicked.stdout
        # dupont's IMAP session ends with BYE; martin's goes on
        with pytest.raises(imaplib.IMAP4.abort):
            for _ in range(20):
                await asyncio.to_thread(dupont.noop)
                await asyncio.sleep(0.05)
        assert (await asyncio.to_thread(martin.noop))[0] == "OK"
        # the SMTP connection was answered 421 and closed
        try:
            code, reply = await asyncio.to_thread(smtp.noop)
        except smtplib.SMTPServerDisconnected:
            code, reply = 0, b"disconnected"
        assert code == 421 and b"closed by the administrator" in reply, (code, reply)
        after = await cli_json("who", d.config_path)
        assert [(s["protocol"], s["person"]) for s in after["sessions"]] == [("imap", "martin")]
    finally:
        for close in (dupont.shutdown, martin.logout, smtp.close):
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                await asyncio.to_thread(close)
    [event] = await audit(d, "control.kicked")
    assert event["person"] == "dupont" and event["box"] is None
    assert event["imap_sessions"] == 1 and event["smtp_sessions"] == 1
    assert event["by_uid"] == os.getuid()

    unknown = await cli("kick", "nobody", "--config", d.config_path)
    assert unknown.returncode == 2
    assert 'unknown person "nobody"' in unknown.stderr and "Traceback" not in unknown.stderr


async def test_kick_with_box_cuts_only_the_sessions_on_that_box(running: RunningDaemon) -> None:
    d = running
    on_shared = await asyncio.to_thread(imap_login, d, "dupont", "secretariat@cpts-demo.mssante.fr")
    own = await asyncio.to_thread(imap_login, d, "dupont")
    try:
        done = await cli(
            "kick", "dupont", "--box", "secretariat@cpts-demo.mssante.fr", "--config", d.config_path
        )
        assert done.returncode == 0, done.stderr
        assert "1 IMAP and 0 SMTP sessions cut" in done.stdout
        with pytest.raises(imaplib.IMAP4.abort):
            for _ in range(20):
                await asyncio.to_thread(on_shared.noop)
                await asyncio.sleep(0.05)
        assert (await asyncio.to_thread(own.noop))[0] == "OK"
    finally:
        await asyncio.to_thread(own.logout)
        await asyncio.to_thread(on_shared.shutdown)
    [event] = await audit(d, "control.kicked")
    assert event["box"] == "secretariat@cpts-demo.mssante.fr" and event["imap_sessions"] == 1


async def test_reload_swaps_a_renewed_certificate_open_connections_keep_theirs(
    running: RunningDaemon,
) -> None:
    d = running
    old = d.pki.fingerprints["server"]
    client = await asyncio.to_thread(imap_login, d, "martin")
    try:
        assert presented_fingerprint(client.sock) == old  # type: ignore[arg-type]
        new = renew_server_certificate(d.pki, d.pki.server_cert, d.pki.server_key)
        done = await cli("reload", "--config", d.config_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"certificate_renewed: {d.pki.server_cert}: sha256 {old} -> {new}" in done.stdout
        # a new connection, implicit TLS, gets the new certificate
        fp = await asyncio.to_thread(implicit_tls_fingerprint, d.ports["imap-tls"], d.pki.ca_bundle)
        assert fp == new
        # and STARTTLS too (SMTP submission)
        assert await asyncio.to_thread(starttls_fingerprint, d) == new
        # the connection opened before keeps its session and its certificate
        assert (await asyncio.to_thread(client.select, "INBOX"))[0] == "OK"
        assert presented_fingerprint(client.sock) == old  # type: ignore[arg-type]
        status = await cli_json("status", d.config_path)
        assert {lst["certificate"]["sha256"] for lst in status["listeners"]} == {new}
    finally:
        await asyncio.to_thread(client.logout)
    [changed] = [c for c in await audit(d, "config.changed") if c["kind"] == "certificate_renewed"]
    assert new in str(changed["detail"])


async def test_reload_of_a_bad_file_is_refused_and_the_old_config_serves(
    running: RunningDaemon,
) -> None:
    d = running
    good = d.config_path.read_text(encoding="utf-8")
    d.config_path.write_text(good.replace('type = "PER"', 'type = "XYZ"', 1), encoding="utf-8")
    done = await cli("reload", "--config", d.config_path)
    assert done.returncode == 2
    assert "reload refused" in done.stdout and "mailboxes[1].type" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert await asyncio.to_thread(ehlo, d.ports["submission"]) == 250
    # a file that is not TOML at all: the CLI still finds the socket ([server] is
    # unreadable, so the default is taken) and the daemon says where the error is
    d.config_path.write_text(good + "\n[[[ nonsense\n", encoding="utf-8")
    broken = await cli("reload", "--config", d.config_path)
    assert broken.returncode == 2
    assert "Traceback" not in broken.stdout + broken.stderr
    # a certificate file that is not a certificate: refused before anything changes
    d.config_path.write_text(good, encoding="utf-8")
    d.pki.server_cert.write_text("not a certificate\n")
    bad_cert = await cli("reload", "--config", d.config_path)
    assert bad_cert.returncode == 2, bad_cert.stdout
    assert "certificate" in bad_cert.stdout
    fp = await asyncio.to_thread(implicit_tls_fingerprint, d.ports["imap-tls"], d.pki.ca_bundle)
    assert fp == d.pki.fingerprints["server"]
    refusals = await audit(d, "config.reload_refused")
    assert len(refusals) >= 2


async def test_reload_adds_moves_and_removes_listeners_without_dropping_others(
    running: RunningDaemon,
) -> None:
    d = running
    p = d.ports
    added, moved_to = free_ports(2)
    kept = await asyncio.to_thread(imap_login, d, "martin")
    try:
        text = d.config_path.read_text(encoding="utf-8")
        # inbound removed; submission (STARTTLS) moved; a new IMAP STARTTLS listener
        inbound = f'[[listeners]]\nkind = "inbound"\naddress = "127.0.0.1:{p["inbound"]}"\n'
        assert inbound in text
        text = text.replace(inbound + 'tls = "starttls"\n', "")
        text = text.replace(f'127.0.0.1:{p["submission"]}"', f'127.0.0.1:{moved_to}"')
        text = text.replace(
            "[[people]]",
            f'[[listeners]]\nkind = "imap"\naddress = "127.0.0.1:{added}"\ntls = "starttls"\n\n'
            "[[people]]",
            1,
        )
        d.config_path.write_text(text, encoding="utf-8")
        done = await cli("reload", "--config", d.config_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "listeners_changed" in done.stdout
        assert await asyncio.to_thread(refused, p["inbound"])
        assert await asyncio.to_thread(refused, p["submission"])
        assert await asyncio.to_thread(ehlo, moved_to) == 250
        await asyncio.to_thread(imap_starttls_login, d, added, "dupont")
        # the IMAPS session opened before the reload is still served
        assert (await asyncio.to_thread(kept.select, "INBOX"))[0] == "OK"
        status = await cli_json("status", d.config_path)
        ports = sorted(int(lst["address"].rsplit(":", 1)[1]) for lst in status["listeners"])
        assert ports == sorted([p["submission-tls"], p["imap"], p["imap-tls"], added, moved_to])
    finally:
        await asyncio.to_thread(kept.logout)


async def test_reload_onto_a_taken_address_is_refused_and_changes_nothing(
    running: RunningDaemon,
) -> None:
    d = running
    [taken] = free_ports(1)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", taken))
    blocker.listen()
    try:
        text = d.config_path.read_text(encoding="utf-8")
        text = text.replace(f'127.0.0.1:{d.ports["submission"]}"', f'127.0.0.1:{taken}"')
        d.config_path.write_text(text, encoding="utf-8")
        done = await cli("reload", "--config", d.config_path)
        assert done.returncode == 2
        assert f"cannot listen on 127.0.0.1:{taken}" in done.stdout
        assert await asyncio.to_thread(ehlo, d.ports["submission"]) == 250
    finally:
        blocker.close()


async def test_commands_without_a_daemon_name_the_socket(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('[server]\nhostname = "localhost"\ndata_dir = "data"\n')
    for command in ("status", "reload", "who"):
        done = await cli(command, "--config", config)
        assert done.returncode == 1
        assert done.stderr.strip() == (
            f"mss-relay: no daemon running: control socket {tmp_path / 'data' / SOCKET_NAME} "
            "does not exist"
        )
    done = await cli("status", "--config", config, env={"RUNTIME_DIRECTORY": str(tmp_path)})
    assert str(tmp_path / SOCKET_NAME) in done.stderr


async def test_version() -> None:
    from relay import __version__

    done = await cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"mss-relay {__version__}"


async def test_a_socket_path_longer_than_sun_path_works_and_a_second_daemon_is_refused(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    sock = deep / "control.sock"
    assert len(str(sock)) > 107  # beyond sun_path: reached through /proc/self/fd
    first = tmp_path / "first"
    first.mkdir()
    d = await start_daemon(first, dev_pki, storage, server_extra=f'control_socket = "{sock}"')
    try:
        status = await cli_json("status", d.config_path)
        assert len(status["listeners"]) == 5
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        second = tmp_path / "second"
        second.mkdir()
        with pytest.raises(StartError, match="another mss-relay answers on it"):
            await start_daemon(second, dev_pki, storage, server_extra=f'control_socket = "{sock}"')
        # the first one still answers
        assert (await cli_json("who", d.config_path))["sessions"] == []
    finally:
        await d.daemon.stop("test finished", grace_seconds=1.0)
    assert not sock.exists()  # removed at stop


def imap_greeting(d: RunningDaemon, listener: str, *, port: int | None = None) -> bytes:
    """The first line a new connection to `listener` gets (TLS for imap-tls), on its
    port or on `port`."""
    address = ("127.0.0.1", port or d.ports[listener])
    with socket.create_connection(address, timeout=10) as raw:
        if listener == "imap-tls":
            with d.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
                return tls.recv(4096)
        return raw.recv(4096)


async def test_reload_applies_limits_to_the_next_connection(running: RunningDaemon) -> None:
    d = running
    first = await asyncio.to_thread(imap_login, d, "martin")  # on imap-tls
    try:
        assert (await asyncio.to_thread(imap_greeting, d, "imap-tls")).startswith(b"* OK")
        text = d.config_path.read_text(encoding="utf-8")
        text = text.replace(
            "auth_lockout_seconds = 60\n", "auth_lockout_seconds = 60\nmax_connections_per_ip = 1\n"
        )
        d.config_path.write_text(text, encoding="utf-8")
        done = await cli("reload", "--config", d.config_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "limits_changed: max_connections_per_ip: 100 -> 1" in done.stdout
        refused = await asyncio.to_thread(imap_greeting, d, "imap-tls")
        assert refused.startswith(b"* BYE Too many connections from 127.0.0.1 (limit 1)"), refused
        # a cap per listener and address: the other listener still lets one in
        assert (await asyncio.to_thread(imap_greeting, d, "imap")).startswith(b"* OK")
        assert (await asyncio.to_thread(first.noop))[0] == "OK"
    finally:
        await asyncio.to_thread(first.logout)


async def test_reload_changing_a_listeners_tls_mode_on_the_same_port(
    running: RunningDaemon,
) -> None:
    """The address the old listener leaves is the new one's: bound once the old one
    stopped accepting."""
    d = running
    assert (await asyncio.to_thread(imap_greeting, d, "imap")).startswith(b"* OK")
    text = d.config_path.read_text(encoding="utf-8")
    old = f'address = "127.0.0.1:{d.ports["imap"]}"\ntls = "starttls"'
    assert old in text
    d.config_path.write_text(text.replace(old, old.replace("starttls", "implicit")))
    done = await cli("reload", "--config", d.config_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # implicit TLS now on the port that spoke STARTTLS
    tls = await asyncio.to_thread(imap_greeting, d, "imap-tls", port=d.ports["imap"])
    assert tls.startswith(b"* OK")


def external_login(d: RunningDaemon) -> str:
    """IMAPS with martin's client certificate, AUTHENTICATE EXTERNAL."""
    m = imaplib.IMAP4_SSL(
        "localhost", d.ports["imap-tls"], ssl_context=d.client_context("person-martin"), timeout=10
    )
    typ, _ = m.authenticate("EXTERNAL", lambda _: b"")
    m.logout()
    return typ


async def test_reload_applies_a_new_crl_file_to_the_next_handshake(running: RunningDaemon) -> None:
    d = running
    assert await asyncio.to_thread(external_login, d) == "OK"
    before = {c["issuer"]: c for c in (await cli_json("status", d.config_path))["crls"]}
    martin_cert, _ = d.pki.cert_and_key("person-martin")
    revoke_in_crl_file(d.pki, d.pki.crl, martin_cert)
    done = await cli("reload", "--config", d.config_path)
    assert done.returncode == 0, done.stdout + done.stderr
    with pytest.raises((ssl.SSLError, ConnectionError, imaplib.IMAP4.abort)):
        await asyncio.to_thread(external_login, d)
    after = {c["issuer"]: c for c in (await cli_json("status", d.config_path))["crls"]}
    changed = [i for i in after if after[i]["this_update"] != before[i]["this_update"]]
    assert len(changed) == 1 and "ORGANISATIONS" in changed[0]  # the intermediate's
    [updated] = await audit(d, "tls.crl_updated")
    assert updated["crl_number"] == 2
