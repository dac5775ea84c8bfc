"""Two mss-relay instances, two operators of the trust space, relay to each other over
mutual TLS with the test PKI, both directions: A (cpts-demo.mssante.fr, certificate
"server") and B (peer.mssante.fr, certificate "peer" of a second operator)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.app import Daemon, load_for_serving
from relay.config.model import StorageConfig
from relay.identity.passwords import hash_password
from relay.store.store import AuditFilter
from relay.tls.pki import DevPki
from tests.delivery.conftest import (
    DR_X,
    delivery_status_blocks,
    letter,
    route,
    submit,
    wait_queue_empty,
    wait_until,
)
from tests.harness import (
    DOMAIN,
    LISTENER_NAMES,
    MARTIN_BOX,
    PEER_DOMAIN,
    RunningDaemon,
    free_ports,
    start_daemon,
)

X_PASSWORD = "dr-x-secret"
NOBODY = f"nobody@{PEER_DOMAIN}"


def write_peer_config(
    directory: Path, pki: DevPki, storage: StorageConfig, ports: dict[str, int], a_inbound: int
) -> Path:
    """Operator B: one doctor, one box, a route back to A."""
    directory.mkdir(parents=True, exist_ok=True)
    schema = f'schema = "{storage.schema}"\n' if storage.schema else ""
    text = f"""
[server]
hostname = "peer.localhost"
data_dir = "{directory / "data"}"

[storage]
url = "{storage.url}"
key_file = "{storage.key_file}"
{schema}
[tls]
certificate = "{pki.peer_cert}"
key = "{pki.peer_key}"
trust_anchors = ["{pki.ca_bundle}"]
crl_files = ["{pki.crl}"]

[[listeners]]
kind = "submission"
address = "127.0.0.1:{ports["submission"]}"
tls = "starttls"

[[listeners]]
kind = "inbound"
address = "127.0.0.1:{ports["inbound"]}"
tls = "starttls"

[[people]]
id = "x"
display_name = "Dr X"
rpps = "10001111111"
password_hash = "{hash_password(X_PASSWORD)}"

[[mailboxes]]
address = "{DR_X}"
type = "PER"
owner = "x"
{route(DOMAIN, a_inbound)}
"""
    path = directory / "relay.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
async def operators(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig, second_storage: StorageConfig
) -> AsyncIterator[tuple[RunningDaemon, RunningDaemon]]:
    b_ports = dict(zip(LISTENER_NAMES, free_ports(len(LISTENER_NAMES)), strict=True))
    (tmp_path / "a").mkdir()
    a = await start_daemon(
        tmp_path / "a", dev_pki, storage, extra=route(PEER_DOMAIN, b_ports["inbound"])
    )
    b_path = write_peer_config(tmp_path / "b", dev_pki, second_storage, b_ports, a.ports["inbound"])
    b_daemon = Daemon(b_path, load_for_serving(b_path))
    try:
        b = RunningDaemon(b_daemon, await b_daemon.start(), b_ports, b_path, dev_pki)
    except BaseException:
        await a.daemon.stop("test failed", grace_seconds=1.0)
        raise
    try:
        await a.trust_peer()  # peer.mssante.fr: the "peer" certificate
        await b.trust_peer(dn=dev_pki.subjects["server"], domain=DOMAIN)
        yield a, b
    finally:
        await b.daemon.stop("test finished", grace_seconds=1.0)
        await a.daemon.stop("test finished", grace_seconds=1.0)


async def test_relay_both_ways_over_mutual_tls(
    operators: tuple[RunningDaemon, RunningDaemon], dev_pki: DevPki
) -> None:
    a, b = operators
    assert a.daemon.worker is not None and b.daemon.worker is not None

    # A → B: one recipient B holds, one it does not know (B refuses it at RCPT).
    code, _ = await submit(a, [DR_X, NOBODY], letter(MARTIN_BOX, DR_X, mid="a-to-b"))
    assert code == 250

    async def at_b() -> bool:
        return len(await b.store.messages(DR_X)) == 1

    a.daemon.worker.wake()
    await wait_until(at_b, what="the message in B's box")
    [got] = await b.store.messages(DR_X)
    assert b"Message-ID: <a-to-b@cabinet.example>" in got.raw
    # B's trace says TLS from A; A's own trace (submission) follows it
    assert got.raw.startswith(b"Received: from localhost ([127.0.0.1])")
    assert got.raw.count(b"Received: ") == 2
    [accepted] = await b.store.audit_rows(AuditFilter(action="message.accepted"))
    b_details = json.loads(accepted.data)["details"]
    assert b_details["certificate_subject"] == dev_pki.subjects["server"]
    assert b_details["sender"] == MARTIN_BOX

    # the unknown recipient bounced at B's RCPT: one DSN in martin's box at A
    async def dsn_at_a() -> bool:
        return len(await a.store.messages(MARTIN_BOX)) == 1

    await wait_until(dsn_at_a, what="the DSN in martin's box at A")
    [dsn] = await a.store.messages(MARTIN_BOX)
    [block] = delivery_status_blocks(dsn.raw)
    assert block["final-recipient"] == f"rfc822; {NOBODY}"
    assert block["status"] == "5.1.1" and block["action"] == "failed"
    [delivered] = await a.store.audit_rows(AuditFilter(action="delivery.delivered"))
    a_details = json.loads(delivered.data)["details"]
    assert a_details["recipient"] == DR_X
    assert a_details["certificate_subject"] == dev_pki.subjects["peer"]

    # B → A: Dr X answers martin
    code, _ = await submit(
        b,
        [MARTIN_BOX],
        letter(DR_X, MARTIN_BOX, mid="b-to-a", subject="Re: Compte rendu"),
        login="x",
        password=X_PASSWORD,
        mail_from=DR_X,
    )
    assert code == 250

    b.daemon.worker.wake()

    async def at_a() -> bool:
        return len(await a.store.messages(MARTIN_BOX)) == 2

    await wait_until(at_a, what="the answer in martin's box at A")
    answer = (await a.store.messages(MARTIN_BOX))[1]
    assert b"Message-ID: <b-to-a@cabinet.example>" in answer.raw
    accepted_at_a = await a.store.audit_rows(AuditFilter(action="message.accepted"))
    inbound = [json.loads(r.data)["details"] for r in accepted_at_a]
    assert [d["certificate_subject"] for d in inbound if d["protocol"] == "smtp-inbound"] == [
        dev_pki.subjects["peer"]
    ]
    # each side's outcome commits right after the peer's 250: both queues drain
    await wait_queue_empty(b)
    await wait_queue_empty(a)
