"""The policy files and the pure patient rules (table-driven)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config.model import BoxType, Mailbox, SeenMode
from relay.ins import parse_ins
from relay.policy import patient
from relay.policy.model import MssantePolicy, PatientPolicy, Policies, PolicyError, load_policies
from relay.policy.xdm import XdmFinding, patient_ids_in_metadata

REPO = Path(__file__).resolve().parent.parent.parent
POLICY = PatientPolicy()


def test_shipped_files_hold_the_builtin_defaults() -> None:
    assert load_policies(REPO / "policies") == Policies()
    assert load_policies(None) == Policies(MssantePolicy(), PatientPolicy())


def test_policy_errors_name_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "patient.toml").write_text(
        'domain = 3\ncolour = "x"\nmax_message_bytes = -1\nclosing_header = " "\n'
    )
    (tmp_path / "mssante.toml").write_text("inbound_requires_listed_domain = 1\n")
    with pytest.raises(PolicyError) as caught:
        load_policies(tmp_path)
    texts = {str(p) for p in caught.value.problems}
    patient_file = tmp_path / "patient.toml"
    assert f"{patient_file}: domain: expected str, got 3" in texts
    assert f"{patient_file}: colour: unknown key" in texts
    assert f"{patient_file}: max_message_bytes: must be a positive integer" in texts
    assert f"{patient_file}: closing_header: must not be empty" in texts
    assert (
        f"{tmp_path / 'mssante.toml'}: inbound_requires_listed_domain: expected bool, got 1"
        in texts
    )


def test_missing_policy_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="policy folder not found"):
        load_policies(tmp_path / "nope")


@pytest.mark.parametrize(
    ("address", "allowed", "rule"),
    [
        ("279035121518989@patient.mssante.fr", True, "patient.ins-valid"),
        ("279035121518989@PATIENT.mssante.fr", True, "patient.ins-valid"),
        ("253072B07300470@patient.mssante.fr", True, "patient.ins-valid"),
        ("279035121518988@patient.mssante.fr", False, "patient.ins-invalid"),
        ("2790351215189@patient.mssante.fr", False, "patient.ins-invalid"),
        ("dr.x@chu.mssante.fr", True, "patient.not-a-patient"),
    ],
)
def test_patient_addresses(address: str, allowed: bool, rule: str) -> None:
    ins, decision = patient.patient_of(POLICY, address)
    assert (decision.allowed, decision.rule) == (allowed, rule)
    assert (ins is not None) == (rule == "patient.ins-valid")
    if not allowed:
        assert decision.reply.startswith("550 5.1.3 ")


def test_one_patient_and_size() -> None:
    a = parse_ins("279035121518989")
    assert patient.one_patient(POLICY, [], a).allowed
    assert patient.one_patient(POLICY, [a.matricule], a).allowed  # same patient twice
    refused = patient.one_patient(POLICY, ["295109912611193"], a)
    assert not refused.allowed and "295109912611193" in refused.reply
    assert patient.size(POLICY, POLICY.max_message_bytes).allowed
    assert not patient.size(POLICY, POLICY.max_message_bytes + 1).allowed


def test_xdm_decisions() -> None:
    mine = {"279035121518989"}
    assert patient.xdm(POLICY, None, mine).allowed
    assert patient.xdm(POLICY, XdmFinding(frozenset(mine)), mine).allowed
    other = patient.xdm(POLICY, XdmFinding(frozenset({"295109912611193"})), mine)
    assert (other.allowed, other.rule) == (False, "patient.xdm-mismatch")
    broken = patient.xdm(POLICY, XdmFinding(frozenset(), "no METADATA.XML"), mine)
    assert (broken.allowed, broken.rule) == (False, "patient.xdm-unreadable")


def test_metadata_patient_ids_without_xml_parser() -> None:
    xml = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY boom "boom">]>
<rim:RegistryObjectList xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0">
 <rim:ExternalIdentifier value='279035121518989^^^&amp;1.2.250.1.213.1.4.8&amp;ISO'
   identificationScheme="urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446" id="a"/>
 <rim:ExternalIdentifier identificationScheme="urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
   value="1.2.3.4^unique-id"/>
</rim:RegistryObjectList>"""
    assert patient_ids_in_metadata(xml) == frozenset({"279035121518989"})


def test_closing_markers() -> None:
    assert patient.closes(POLICY, ["FIN"], "Suivi")
    assert patient.closes(POLICY, [" fin "], None)
    assert patient.closes(POLICY, [], "[FIN] Résultats")
    assert not patient.closes(POLICY, ["SUITE"], "Résultats finaux")


def _box(pharmacy: bool) -> Mailbox:
    return Mailbox(
        address="pharmacie@x.mssante.fr",
        type=BoxType.ORG,
        owner=None,
        structure_id="123456789",
        responsible="p",
        liste_rouge=False,
        seen=SeenMode.SHARED,
        pharmacy=pharmacy,
        coholders=(),
    )


@pytest.mark.parametrize(
    ("pharmacy", "state", "allowed", "rule"),
    [
        (False, "open", True, "patient.reply-in-conversation"),
        (False, None, False, "patient.no-conversation"),
        (False, "closed", False, "patient.conversation-closed"),
        (True, None, True, "patient.pharmacy-first-message"),
        (True, "closed", True, "patient.pharmacy-first-message"),
    ],
)
def test_patient_may_write(pharmacy: bool, state: str | None, allowed: bool, rule: str) -> None:
    ins = parse_ins("279035121518989")
    decision = patient.patient_may_write(POLICY, _box(pharmacy), ins, state)
    assert (decision.allowed, decision.rule) == (allowed, rule)
