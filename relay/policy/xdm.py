"""The patient identifier inside an IHE_XDM.ZIP attachment (pure).

MSSanté documents travel as `IHE_XDM.ZIP` holding `IHE_XDM/SUBSET01/METADATA.XML`, an
ebRIM SubmitObjectsRequest (IHE ITI TF-3 §4.2.3). The patient is in the
ExternalIdentifier of the submission set and of each document entry whose scheme is
the patientId one, as an HL7 CX value `INS^^^&OID&ISO`; `sourcePatientId` slots carry
the same form.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import zipfile
from dataclasses import dataclass

from relay.message.analysis import BodyPart, MessageMeta

XDM_FILE_NAME = "IHE_XDM.ZIP"
METADATA_PATH = "IHE_XDM/SUBSET01/METADATA.XML"
# IHE ITI TF-3 Table 4.2.3.2-1 / 4.2.3.3-1: identificationScheme of patientId.
PATIENT_ID_SCHEMES = frozenset(
    {
        "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427",  # XDSDocumentEntry.patientId
        "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446",  # XDSSubmissionSet.patientId
    }
)

_EXTERNAL_ID = re.compile(rb"<(?:\w+:)?ExternalIdentifier\b[^>]*>", re.IGNORECASE | re.DOTALL)
_ATTR = re.compile(rb'(\w+)\s*=\s*"([^"]*)"|(\w+)\s*=\s*\'([^\']*)\'')
_SOURCE_PATIENT = re.compile(
    rb'<(?:\w+:)?Slot\b[^>]*name\s*=\s*["\']sourcePatientId["\'][^>]*>.*?'
    rb"<(?:\w+:)?Value>([^<]*)</(?:\w+:)?Value>",
    re.IGNORECASE | re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class XdmFinding:
    """What the XDM of a message says: patient ids found, or why none could be read."""

    patient_ids: frozenset[str]
    problem: str | None = None


def _walk(part: BodyPart) -> list[BodyPart]:
    out = [part]
    for child in part.parts:
        out.extend(_walk(child))
    return out


def _is_xdm(part: BodyPart) -> bool:
    names = [part.param("name")]
    names += [value for key, value in part.disposition_params if key == "filename"]
    return any(n is not None and n.strip('"').upper() == XDM_FILE_NAME for n in names)


def _cx_id(value: str) -> str:
    """`279035121518989^^^&1.2.250.1.213.1.4.8&ISO` → `279035121518989`."""
    return value.split("^", 1)[0].strip()


def patient_ids_in_metadata(xml: bytes) -> frozenset[str]:
    """Patient identifiers of a METADATA.XML, read without an XML parser (no entity
    expansion, no DOCTYPE processing: this input comes from outside)."""
    ids: set[str] = set()
    for match in _EXTERNAL_ID.finditer(xml):
        attrs: dict[bytes, bytes] = {}
        for m in _ATTR.finditer(match.group(0)):
            key = m.group(1) or m.group(3)
            value = m.group(2) if m.group(1) else m.group(4)
            attrs[key.lower()] = value
        scheme = attrs.get(b"identificationscheme", b"").decode("ascii", "replace")
        if scheme in PATIENT_ID_SCHEMES and b"value" in attrs:
            ids.add(_cx_id(attrs[b"value"].decode("utf-8", "replace")))
    for m in _SOURCE_PATIENT.finditer(xml):
        ids.add(_cx_id(m.group(1).decode("utf-8", "replace")))
    return frozenset(i for i in ids if i)


def find_xdm_patients(
    raw: bytes, meta: MessageMeta, *, max_metadata_bytes: int
) -> XdmFinding | None:
    """None when the message carries no IHE_XDM.ZIP; else the patient ids it names."""
    parts = [p for p in _walk(meta.body) if _is_xdm(p)]
    if not parts:
        return None
    ids: set[str] = set()
    for part in parts:
        body = raw[part.body_start : part.end]
        if part.encoding.lower() == "base64":
            try:
                body = base64.b64decode(b"".join(body.split()), validate=True)
            except (binascii.Error, ValueError):
                return XdmFinding(frozenset(), "IHE_XDM.ZIP is not valid base64")
        try:
            with zipfile.ZipFile(io.BytesIO(body)) as archive:
                names = {n.upper(): n for n in archive.namelist()}
                name = names.get(METADATA_PATH)
                if name is None:
                    return XdmFinding(frozenset(), f"IHE_XDM.ZIP has no {METADATA_PATH}")
                if archive.getinfo(name).file_size > max_metadata_bytes:
                    return XdmFinding(frozenset(), "METADATA.XML is too large")
                with archive.open(name) as f:
                    xml = f.read(max_metadata_bytes + 1)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError):
            return XdmFinding(frozenset(), "IHE_XDM.ZIP is not a readable zip archive")
        if len(xml) > max_metadata_bytes:
            return XdmFinding(frozenset(), "METADATA.XML is too large")
        ids |= patient_ids_in_metadata(xml)
    if not ids:
        return XdmFinding(frozenset(), "METADATA.XML names no patient")
    return XdmFinding(frozenset(ids))
