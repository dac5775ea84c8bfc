"""Patient messaging rules over real SMTP (submission and inbound), both engines."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import smtplib
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.config.model import StorageConfig
from relay.store import conversations
from relay.store.store import AuditFilter
from relay.tls.pki import DevPki
from tests.harness import MARTIN_BOX, PASSWORDS, SHARED, RunningDaemon, daemon_running

REPO = Path(__file__).resolve().parent.parent.parent
PATIENT = "279035121518989"
CORSICAN = "253072A07300443"
OTHER = "295109912611193"
PHARMACY = "pharmacie@cpts-demo.mssante.fr"
GATEWAY = "patient.mssante.fr"

EXTRA = f"""
[[mailboxes]]
address = "{PHARMACY}"
type = "ORG"
owner = "martin"
responsible = "martin"
pharmacy = true

[[routes]]
domain = "{GATEWAY}"
host = "127.0.0.1"
port = 9
"""


def policy_dir(tmp: Path, max_bytes: int | None = None) -> Path:
    folder = tmp / "policies"
    folder.mkdir()
    for name in ("mssante.toml", "patient.toml"):
        text = (REPO / "policies" / name).read_text()
        if max_bytes is not None and name == "patient.toml":
            text = text.replace("max_message_bytes = 26214400", f"max_message_bytes = {max_bytes}")
        (folder / name).write_text(text)
    return folder


@pytest.fixture
async def pdaemon(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> AsyncIterator[RunningDaemon]:
    """The test daemon with the shipped policies (patient limit lowered to 20 kB so the
    size rule can be shown without 25 MB messages), a pharmacy box, a patient route."""
    folder = policy_dir(tmp_path, max_bytes=20_000)
    server_extra = f'policy_dir = "{folder}"'
    async with daemon_running(
        tmp_path, dev_pki, storage, extra=EXTRA, server_extra=server_extra
    ) as running:
        # The patient gateway is an MSSanté operator: listed in the trust space (its
        # certificate is the dev PKI's second operator), reached by the route above.
        await running.trust_peer(domain=GATEWAY)
        yield running


def letter(
    to: str,
    *,
    subject: str = "Compte rendu",
    headers: str = "",
    body: str = "Bonjour.",
    attachment: bytes | None = None,
) -> bytes:
    head = (
        f"From: <{MARTIN_BOX}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Date: Sun, 22 Nov 2026 06:00:00 +0100\r\n{headers}"
    )
    if attachment is None:
        return (head + f"\r\n{body}\r\n").encode()
    b64 = base64.encodebytes(attachment).decode().replace("\n", "\r\n")
    return (
        head + "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        f"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
        '--b1\r\nContent-Type: application/zip; name="IHE_XDM.ZIP"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="IHE_XDM.ZIP"\r\n\r\n'
        f"{b64}--b1--\r\n"
    ).encode()


def xdm_zip(patient_ins: str) -> bytes:
    metadata = f"""<?xml version="1.0" encoding="UTF-8"?>
<lcm:SubmitObjectsRequest xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
    xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0">
 <rim:RegistryObjectList>
  <rim:ExtrinsicObject id="doc1" mimeType="text/xml">
   <rim:Slot name="sourcePatientId"><rim:ValueList>
     <rim:Value>{patient_ins}^^^&amp;1.2.250.1.213.1.4.8&amp;ISO</rim:Value>
   </rim:ValueList></rim:Slot>
   <rim:ExternalIdentifier id="ei1" registryObject="doc1"
     identificationScheme="urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
     value="{patient_ins}^^^&amp;1.2.250.1.213.1.4.8&amp;ISO"/>
  </rim:ExtrinsicObject>
 </rim:RegistryObjectList>
</lcm:SubmitObjectsRequest>
"""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("IHE_XDM/SUBSET01/METADATA.XML", metadata)
        z.writestr("IHE_XDM/SUBSET01/DOC0001.XML", "<ClinicalDocument/>")
        z.writestr("INDEX.HTM", "<html></html>")
    return buf.getvalue()


def submit(
    d: RunningDaemon, rcpts: list[str], data: bytes, size: int | None = None, box: str = MARTIN_BOX
) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=10) as s:
        s.starttls(context=d.client_context())
        s.login("martin", PASSWORDS["martin"])
        opts = [f"SIZE={size}"] if size is not None else []
        code, msg = s.mail(box, opts)
        if code != 250:
            return code, msg
        for r in rcpts:
            code, msg = s.rcpt(r)
            if code != 250:
                return code, msg
        return s.data(data)


def from_patient(d: RunningDaemon, ins: str, box: str, data: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", d.ports["inbound"], timeout=10) as s:
        s.ehlo("mx.patient.mssante.fr")
        s.starttls(context=d.client_context(cert="peer"))
        s.ehlo("mx.patient.mssante.fr")
        code, msg = s.mail(f"{ins}@{GATEWAY}")
        if code != 250:
            return code, msg
        code, msg = s.rcpt(box)
        if code != 250:
            return code, msg
        return s.data(data)


def reply_from(ins: str, box: str) -> bytes:
    return (
        f"From: <{ins}@{GATEWAY}>\r\nTo: <{box}>\r\nSubject: Re: Compte rendu\r\n"
        f"Message-ID: <r-{ins}@{GATEWAY}>\r\n\r\nMerci docteur.\r\n"
    ).encode()


async def refusal_rules(d: RunningDaemon) -> list[str]:
    rows = await d.store.audit_rows(AuditFilter(action="message.refused"))
    return [json.loads(r.data)["details"]["rule"] for r in rows]


async def test_valid_ins_accepted_and_conversation_opened(pdaemon: RunningDaemon) -> None:
    code, msg = await asyncio.to_thread(
        submit, pdaemon, [f"{PATIENT}@{GATEWAY}"], letter(f"{PATIENT}@{GATEWAY}")
    )
    assert code == 250, msg
    [row] = [q for q in await pdaemon.store.queue_rows() if q["recipient"].startswith(PATIENT)]
    assert row["status"] in {"queued", "sending", "deferred"}  # the worker may have tried
    conv = await conversations.get(pdaemon.store, MARTIN_BOX, PATIENT)
    assert conv is not None and conv.state == "open" and conv.opened_by == "professional"
    [event] = await pdaemon.store.audit_rows(AuditFilter(action="patient.conversation"))
    assert (event.person, event.box) == ("martin", MARTIN_BOX)
    assert json.loads(event.data)["details"]["change"] == "opened"


async def test_corsican_ins_accepted(pdaemon: RunningDaemon) -> None:
    code, msg = await asyncio.to_thread(
        submit, pdaemon, [f"{CORSICAN}@{GATEWAY}"], letter(f"{CORSICAN}@{GATEWAY}")
    )
    assert code == 250, msg


async def test_wrong_key_refused_naming_the_ins(pdaemon: RunningDaemon) -> None:
    bad = PATIENT[:-1] + "8"
    code, msg = await asyncio.to_thread(
        submit, pdaemon, [f"{bad}@{GATEWAY}"], letter(f"{bad}@{GATEWAY}")
    )
    assert code == 550 and msg.startswith(b"5.1.3 ")
    assert bad.encode() in msg and b"key" in msg.lower()
    assert await refusal_rules(pdaemon) == ["patient.ins-invalid"]


async def test_two_patients_in_one_message_refused(pdaemon: RunningDaemon) -> None:
    code, msg = await asyncio.to_thread(
        submit,
        pdaemon,
        [f"{PATIENT}@{GATEWAY}", f"{OTHER}@{GATEWAY}"],
        letter(f"{PATIENT}@{GATEWAY}"),
    )
    assert code == 550
    assert msg.startswith(b"5.7.1 One patient per message")
    assert PATIENT.encode() in msg and OTHER.encode() in msg
    assert await refusal_rules(pdaemon) == ["patient.one-per-message"]


async def test_xdm_for_another_patient_refused(pdaemon: RunningDaemon) -> None:
    to = f"{PATIENT}@{GATEWAY}"
    code, msg = await asyncio.to_thread(
        submit, pdaemon, [to], letter(to, attachment=xdm_zip(OTHER))
    )
    assert code == 550
    assert (
        msg
        == (
            f"5.7.1 The IHE_XDM.ZIP document is for patient {OTHER} but the message is "
            f"addressed to patient {PATIENT}"
        ).encode()
    )
    assert await refusal_rules(pdaemon) == ["patient.xdm-mismatch"]
    code, msg = await asyncio.to_thread(
        submit, pdaemon, [to], letter(to, attachment=xdm_zip(PATIENT))
    )
    assert code == 250, msg


async def test_oversize_patient_mail_refused(pdaemon: RunningDaemon) -> None:
    to = f"{PATIENT}@{GATEWAY}"
    code, msg = await asyncio.to_thread(submit, pdaemon, [to], letter(to), 30_000)
    assert code == 552 and msg.startswith(b"5.3.4 Message too big for patient messaging")
    big = letter(to, body="x" * 70 + ("\r\n" + "x" * 70) * 400)
    code, msg = await asyncio.to_thread(submit, pdaemon, [to], big)
    assert code == 552 and msg.startswith(b"5.3.4 ")
    assert await refusal_rules(pdaemon) == ["patient.size", "patient.size"]
    # the same size to a professional is fine: the limit is the patient gateway's
    code, msg = await asyncio.to_thread(submit, pdaemon, [SHARED], big)
    assert code == 250, msg


async def test_patient_reply_accepted_only_in_open_conversation(
    pdaemon: RunningDaemon,
) -> None:
    # first message from the patient: refused (only a professional opens)
    code, msg = await asyncio.to_thread(
        from_patient, pdaemon, PATIENT, MARTIN_BOX, reply_from(PATIENT, MARTIN_BOX)
    )
    assert code == 550, msg
    assert msg.startswith(f"5.7.1 Patient {PATIENT} may only reply".encode())
    # the doctor writes: the conversation opens, the patient's reply is accepted
    to = f"{PATIENT}@{GATEWAY}"
    assert (await asyncio.to_thread(submit, pdaemon, [to], letter(to)))[0] == 250
    code, msg = await asyncio.to_thread(
        from_patient, pdaemon, PATIENT, MARTIN_BOX, reply_from(PATIENT, MARTIN_BOX)
    )
    assert code == 250, msg
    [stored] = await pdaemon.store.messages(MARTIN_BOX)
    assert b"Merci docteur." in stored.raw
    # FIN closes it: the next patient message is refused
    code, msg = await asyncio.to_thread(
        submit, pdaemon, [to], letter(to, headers="X-MSS-MES: FIN\r\n")
    )
    assert code == 250, msg
    code, msg = await asyncio.to_thread(
        from_patient, pdaemon, PATIENT, MARTIN_BOX, reply_from(PATIENT, MARTIN_BOX)
    )
    assert code == 550 and b"was closed by the professional" in msg
    rules = await refusal_rules(pdaemon)
    assert rules == ["patient.no-conversation", "patient.conversation-closed"]
    changes = [
        json.loads(r.data)["details"]["change"]
        for r in await pdaemon.store.audit_rows(AuditFilter(action="patient.conversation"))
    ]
    assert changes == ["opened", "continued", "closed"]


async def test_subject_fin_marker_closes_too(pdaemon: RunningDaemon) -> None:
    to = f"{OTHER}@{GATEWAY}"
    assert (await asyncio.to_thread(submit, pdaemon, [to], letter(to)))[0] == 250
    assert (await asyncio.to_thread(submit, pdaemon, [to], letter(to, subject="[FIN] Suivi")))[
        0
    ] == 250
    conv = await conversations.get(pdaemon.store, MARTIN_BOX, OTHER)
    assert conv is not None and conv.state == "closed" and conv.messages == 2


async def test_patient_may_write_first_to_a_pharmacy(pdaemon: RunningDaemon) -> None:
    code, msg = await asyncio.to_thread(
        from_patient, pdaemon, PATIENT, PHARMACY, reply_from(PATIENT, PHARMACY)
    )
    assert code == 250, msg
    conv = await conversations.get(pdaemon.store, PHARMACY, PATIENT)
    assert conv is not None and conv.opened_by == "patient"
    listed = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "relay.cli",
            "patients",
            "list",
            "--config",
            str(pdaemon.config_path),
            PHARMACY,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"{PATIENT}  open" in listed.stdout
    assert f"1 patient conversations for {PHARMACY}" in listed.stdout


async def test_patient_sender_with_bad_ins_refused(pdaemon: RunningDaemon) -> None:
    code, msg = await asyncio.to_thread(
        from_patient, pdaemon, "12345", PHARMACY, reply_from("12345", PHARMACY)
    )
    assert code == 550 and msg.startswith(b"5.1.7 ")
