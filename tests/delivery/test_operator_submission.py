"""Gateway mode, outgoing: mail a co-holder sends as a box hosted at an MSSanté operator
leaves through the operator's submission service with the box's credential.

The operator is a second mss-relay (B) with a submission listener and AUTH: it hosts
the box `cpts@coordo.operateur.mssante.fr` for one login (the box's credential, which
only the gateway A holds) and relays to a scripted peer MTA (`FakePeer`) for the
recipients' operator. A (the gateway) serves the box to its co-holders.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.app import Daemon, load_for_serving
from relay.config.model import StorageConfig
from relay.identity.passwords import hash_password
from relay.store.store import AuditFilter
from relay.tls.pki import DevPki
from tests.delivery.conftest import (
    DR_X,
    FakePeer,
    parse_message,
    queue_rows,
    route,
    submit,
    use_clock,
    wait_queue_empty,
    wait_status,
    wait_until,
)
from tests.harness import (
    LISTENER_NAMES,
    PASSWORDS,
    PEER_DOMAIN,
    RunningDaemon,
    free_ports,
    start_daemon,
)

OPERATOR_DOMAIN = "coordo.operateur.mssante.fr"
OP_BOX = f"cpts@{OPERATOR_DOMAIN}"
OP_LOGIN = "cpts-valdeloue"
OP_PASSWORD = "box-secret-at-the-operator"


def _letter(to: str, mid: str) -> bytes:
    return (
        f"From: CPTS <{OP_BOX}>\r\nTo: <{to}>\r\nSubject: Compte rendu\r\n"
        f"Message-ID: <{mid}@cabinet.example>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nCompte rendu (test).\r\n"
    ).encode()


def write_operator_config(
    directory: Path,
    pki: DevPki,
    storage: StorageConfig,
    ports: dict[str, int],
    peer_port: int,
    *,
    cert: str,
) -> Path:
    """Operator B: hosts OP_BOX for the login OP_LOGIN; relays to the FakePeer."""
    directory.mkdir(parents=True, exist_ok=True)
    chain, key = pki.cert_and_key(cert)
    schema = f'schema = "{storage.schema}"\n' if storage.schema else ""
    text = f"""
[server]
hostname = "operateur.localhost"
data_dir = "{directory / "data"}"

[storage]
url = "{storage.url}"
key_file = "{storage.key_file}"
{schema}
[tls]
certificate = "{chain}"
key = "{key}"
trust_anchors = ["{pki.ca_bundle}"]
crl_files = ["{pki.crl}"]

[[listeners]]
kind = "submission"
address = "127.0.0.1:{ports["submission"]}"
tls = "starttls"

[[listeners]]
kind = "submission"
address = "127.0.0.1:{ports["submission-tls"]}"
tls = "implicit"

[[people]]
id = "cptsbox"
login = "{OP_LOGIN}"
display_name = "CPTS du Val de Loue"
rpps = "10002222222"
password_hash = "{hash_password(OP_PASSWORD)}"
certificate_fingerprints = ["{pki.fingerprints["person-dupont"]}"]

[[mailboxes]]
address = "{OP_BOX}"
type = "ORG"
owner = "cptsbox"
responsible = "cptsbox"
{route(PEER_DOMAIN, peer_port)}
"""
    path = directory / "relay.toml"
    path.write_text(text, encoding="utf-8")
    return path


def upstream_box(
    submission: str, password_file: Path, trust_anchor: Path, *, certificate: DevPki | None = None
) -> str:
    """The hosted box in A's config: dupont may send as it, leroy only read. With
    `certificate`, the box's credential is a client certificate (the dev PKI's
    "person-dupont" one stands in for the box's) instead of the password file."""
    if certificate is not None:
        chain, key = certificate.cert_and_key("person-dupont")
        credential = f'certificate = "{chain}"\nkey = "{key}"'
    else:
        credential = f'password_file = "{password_file}"'
    return f"""
[[mailboxes]]
address = "{OP_BOX}"
type = "ORG"
owner = "martin"
responsible = "martin"

[mailboxes.upstream]
imap = "imaps://localhost:1"
submission = "{submission}"
login = "{OP_LOGIN}"
{credential}
trust_anchors = ["{trust_anchor}"]

[[mailboxes.coholders]]
person = "dupont"
rights = ["read", "flag", "send"]

[[mailboxes.coholders]]
person = "leroy"
rights = ["read"]
"""


@dataclass
class Gateway:
    a: RunningDaemon  # the gateway: serves OP_BOX to its co-holders
    b: RunningDaemon  # the operator: hosts OP_BOX, its submission on 587 and 465
    peer: FakePeer  # the recipients' operator
    password_file: Path


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def gateway(
    tmp_path: Path,
    dev_pki: DevPki,
    storage: StorageConfig,
    second_storage: StorageConfig,
    peers: Callable[..., Awaitable[FakePeer]],
) -> AsyncIterator[GatewayFactory]:
    running: list[RunningDaemon] = []

    async def make(
        *, scheme: str = "smtp", operator_cert: str = "peer", credential: str = "password"
    ) -> Gateway:
        peer = await peers("peer")
        b_ports = dict(zip(LISTENER_NAMES, free_ports(len(LISTENER_NAMES)), strict=True))
        b_path = write_operator_config(
            tmp_path / "b", dev_pki, second_storage, b_ports, peer.port, cert=operator_cert
        )
        b_daemon = Daemon(b_path, load_for_serving(b_path))
        b = RunningDaemon(b_daemon, await b_daemon.start(), b_ports, b_path, dev_pki)
        running.append(b)
        await b.trust_peer()  # peer.mssante.fr, "peer" certificate
        (tmp_path / "a").mkdir()
        password_file = tmp_path / "a" / "operator.password"
        password_file.write_text(OP_PASSWORD + "\n", encoding="utf-8")
        os.chmod(password_file, 0o600)
        port = b_ports["submission" if scheme == "smtp" else "submission-tls"]
        a = await start_daemon(
            tmp_path / "a",
            dev_pki,
            storage,
            extra=upstream_box(
                f"{scheme}://localhost:{port}",
                password_file,
                dev_pki.ca_bundle,
                certificate=dev_pki if credential == "certificate" else None,
            ),
        )
        running.append(a)
        await a.trust_peer()  # the recipient's domain passes A's local check too
        return Gateway(a, b, peer, password_file)

    yield make
    for d in reversed(running):
        await d.daemon.stop("test finished", grace_seconds=1.0)


@pytest.mark.parametrize(
    ("scheme", "credential"),
    [("smtp", "password"), ("smtps", "password"), ("smtps", "certificate")],
)
async def test_sent_as_hosted_box_leaves_through_the_operator(
    gateway: GatewayFactory, dev_pki: DevPki, scheme: str, credential: str
) -> None:
    g = await gateway(scheme=scheme, credential=credential)
    code, _ = await submit(
        g.a,
        [DR_X],
        _letter(DR_X, "via-operator"),
        login="dupont",
        password=PASSWORDS["dupont"],
        mail_from=OP_BOX,
    )
    assert code == 250
    assert g.a.daemon.worker is not None and g.b.daemon.worker is not None
    g.a.daemon.worker.wake()

    async def arrived() -> bool:
        assert g.b.daemon.worker is not None
        g.b.daemon.worker.wake()
        return len(g.peer.accepted) == 1

    await wait_until(arrived, what="the message at the recipients' operator")
    [got] = g.peer.accepted
    # The envelope is the box's; the peer saw the *operator's* certificate, not A's:
    # nothing went from A to the recipients' operator directly.
    assert (got.mail_from, got.rcpt_tos) == (OP_BOX, [DR_X])
    assert got.client_subject is not None and "OPERATEUR PAIR TEST" in got.client_subject
    assert len(g.peer.data_seen) == 1
    msg = parse_message(got.content)
    # Sender: names the person, with the box's address (what the operator accepts).
    assert f'\r\nSender: "Marie Dupont" <{OP_BOX}>\r\n'.encode() in got.content
    assert len(msg.get_all("Sender") or []) == 1
    assert msg["From"] == f"CPTS <{OP_BOX}>"
    assert msg["Message-ID"] == "<via-operator@cabinet.example>"
    # B's trace: an authenticated TLS submission (RFC 3848 ESMTPSA) from A.
    received = msg.get_all("Received")
    assert (
        received is not None
        and "ESMTPSA" in received[0]
        and "by operateur.localhost" in (received[0])
    )

    # At the operator: the box's login authenticated, the message accepted as the box.
    [auth] = await g.b.store.audit_rows(AuditFilter(action="auth.succeeded"))
    assert auth.person == "cptsbox"
    expected = ("EXTERNAL", OP_LOGIN) if credential == "certificate" else ("PLAIN", OP_LOGIN)
    details = json.loads(auth.data)["details"]
    assert (details["mechanism"], details["login"]) == expected
    accepted = [
        json.loads(r.data)["details"]
        for r in await g.b.store.audit_rows(AuditFilter(action="message.accepted"))
    ]
    assert [(d["sender"], d["protocol"]) for d in accepted] == [(OP_BOX, "smtp-submission")]

    # At the gateway: delivered to the operator's submission, its certificate verified.
    await wait_queue_empty(g.a)
    [delivered] = await g.a.store.audit_rows(AuditFilter(action="delivery.delivered"))
    details = json.loads(delivered.data)["details"]
    assert delivered.person == "dupont"
    port = g.b.ports["submission" if scheme == "smtp" else "submission-tls"]
    assert delivered.peer == f"localhost:{port}"
    assert details["certificate_subject"] == dev_pki.subjects["peer"]
    # The operator kept no copy of its own (no Sent copy from submission: the client's
    # Sent copy goes up once, by the journal): B's store holds nothing for the box.
    assert await g.b.store.messages(OP_BOX) == []


async def test_untrusted_operator_certificate_is_deferred(gateway: GatewayFactory) -> None:
    g = await gateway(operator_cert="rogue")  # issued by a CA A does not trust
    code, _ = await submit(
        g.a,
        [DR_X],
        _letter(DR_X, "rogue"),
        login="dupont",
        password=PASSWORDS["dupont"],
        mail_from=OP_BOX,
    )
    assert code == 250
    [row] = await wait_status(g.a, "deferred")
    assert row.last_reply is not None
    assert row.last_reply.startswith("4.7.5 localhost:"), row.last_reply
    assert "peer certificate refused" in row.last_reply
    # Nothing reached the operator (no AUTH: the password was never sent) nor the peer.
    assert await g.b.store.audit_rows(AuditFilter(action="auth.succeeded")) == []
    assert await g.b.store.audit_rows(AuditFilter(action="auth.failed")) == []
    assert g.peer.data_seen == []
    [deferred] = await g.a.store.audit_rows(AuditFilter(action="delivery.deferred"))
    assert "peer certificate refused" in json.loads(deferred.data)["details"]["reason"]


async def test_refused_credential_is_deferred_then_the_new_one_is_used(
    gateway: GatewayFactory,
) -> None:
    g = await gateway()
    g.password_file.write_text("an old password\n", encoding="utf-8")
    clock = use_clock(g.a)
    code, _ = await submit(
        g.a,
        [DR_X],
        _letter(DR_X, "rotated"),
        login="dupont",
        password=PASSWORDS["dupont"],
        mail_from=OP_BOX,
    )
    assert code == 250
    [row] = await wait_status(g.a, "deferred")
    assert row.last_reply is not None and row.last_reply.startswith("4.7.8 "), row.last_reply
    assert f"refused the box's credential (login {OP_LOGIN})" in row.last_reply
    assert OP_PASSWORD not in row.last_reply and "an old password" not in row.last_reply
    # The admin fixes the file; no reload: it is read at each connection.
    g.password_file.write_text(OP_PASSWORD + "\n", encoding="utf-8")
    clock.advance(3600)
    await wait_queue_empty(g.a)

    async def arrived() -> bool:
        assert g.b.daemon.worker is not None
        g.b.daemon.worker.wake()
        return len(g.peer.accepted) == 1

    await wait_until(arrived, what="the message at the peer")


async def test_recipient_refused_by_the_operator_bounces(gateway: GatewayFactory) -> None:
    g = await gateway()
    unknown = f"nobody@{OPERATOR_DOMAIN}"
    # Listed in the trust space (the operator's own domain): A's check lets it through;
    # the operator knows no such box and refuses it at RCPT.
    await g.a.trust_peer(domain=OPERATOR_DOMAIN)
    code, _ = await submit(
        g.a,
        [unknown],
        _letter(unknown, "unknown"),
        login="dupont",
        password=PASSWORDS["dupont"],
        mail_from=OP_BOX,
    )
    assert code == 250
    assert g.a.daemon.worker is not None
    g.a.daemon.worker.wake()

    async def bounced() -> bool:
        rows = await g.a.store.audit_rows(AuditFilter(action="delivery.bounced"))
        return len(rows) == 1

    await wait_until(bounced, what="the bounce")
    [row] = await g.a.store.audit_rows(AuditFilter(action="delivery.bounced"))
    assert json.loads(row.data)["answer"].startswith("550 5.1.1")

    # The failure DSN goes to the box, where it lives (the operator), by the route
    # any mail to the operator's domain takes: queued with a null reverse-path.
    async def dsn_queued() -> bool:
        return any(r.sender == "" for r in await queue_rows(g.a))

    await wait_until(dsn_queued, what="the DSN in the queue")
    dsn = [r for r in await queue_rows(g.a) if r.sender == ""]
    assert [(r.recipient, r.box) for r in dsn] == [(OP_BOX, None)]


async def test_readonly_mirror_cannot_send(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> None:
    """A hosted box without a submission endpoint: MAIL FROM it is refused."""
    password_file = tmp_path / "operator.password"
    password_file.write_text(OP_PASSWORD, encoding="utf-8")
    os.chmod(password_file, 0o600)
    box = upstream_box("smtp://localhost:1", password_file, dev_pki.ca_bundle)
    box = box.replace('submission = "smtp://localhost:1"\n', "")
    a = await start_daemon(tmp_path, dev_pki, storage, extra=box)
    try:
        code, msg = await submit(
            a,
            [DR_X],
            _letter(DR_X, "ro"),
            login="dupont",
            password=PASSWORDS["dupont"],
            mail_from=OP_BOX,
        )
        assert code == 550 and b"no submission endpoint" in msg
        [refusal] = await a.store.audit_rows(AuditFilter(action="message.refused"))
        assert json.loads(refusal.data)["details"]["rule"] == "send-as.no-operator-submission"
        assert await queue_rows(a) == []
    finally:
        await a.daemon.stop("test finished", grace_seconds=1.0)
