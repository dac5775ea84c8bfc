"""Patient messaging rules (pure): each check returns a Decision naming its rule.

MSSANTE.md, patient messaging: the patient address is `<INS>@patient.mssante.fr`; only
a professional may start and close a conversation; the patient may only reply, except
to the box of a pharmacy; one patient per message; Mon espace santé refuses messages
over 25 MB.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from relay.config.model import Mailbox
from relay.ins import Ins, InsError, parse_patient_address
from relay.policy.model import PatientPolicy
from relay.policy.xdm import XdmFinding


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str
    reply: str = ""  # the SMTP reply when refused


def allow(rule: str) -> Decision:
    return Decision(True, rule)


def refuse(rule: str, reply: str) -> Decision:
    return Decision(False, rule, reply)


def patient_of(policy: PatientPolicy, address: str) -> tuple[Ins | None, Decision]:
    """Whether `address` is a patient's, and if so whether its INS is valid."""
    try:
        ins = parse_patient_address(address, policy.domain)
    except InsError as exc:
        return None, refuse("patient.ins-invalid", f"550 5.1.3 {exc.message}")
    if ins is None:
        return None, allow("patient.not-a-patient")
    return ins, allow("patient.ins-valid")


def one_patient(policy: PatientPolicy, already: Iterable[str], ins: Ins) -> Decision:
    others = sorted(set(already) - {ins.matricule})
    if policy.one_patient_per_message and others:
        return refuse(
            "patient.one-per-message",
            f"550 5.7.1 One patient per message: this message already goes to patient "
            f"{others[0]}; send a separate message to {ins.matricule}",
        )
    return allow("patient.one-per-message")


def size(policy: PatientPolicy, octets: int) -> Decision:
    if octets > policy.max_message_bytes:
        return refuse(
            "patient.size",
            f"552 5.3.4 Message too big for patient messaging: {octets} octets, at most "
            f"{policy.max_message_bytes}",
        )
    return allow("patient.size")


def xdm(policy: PatientPolicy, finding: XdmFinding | None, recipients: Iterable[str]) -> Decision:
    """The document's patient must be the recipient (no letter for A sent to B)."""
    if not policy.check_xdm_patient or finding is None:
        return allow("patient.xdm")
    wanted = set(recipients)
    if finding.problem is not None:
        return refuse(
            "patient.xdm-unreadable",
            f"550 5.6.0 The IHE_XDM.ZIP cannot be checked: {finding.problem}",
        )
    strangers = sorted(finding.patient_ids - wanted)
    if strangers:
        return refuse(
            "patient.xdm-mismatch",
            f"550 5.7.1 The IHE_XDM.ZIP document is for patient {strangers[0]} but the "
            f"message is addressed to patient {', '.join(sorted(wanted))}",
        )
    return allow("patient.xdm")


def closes(policy: PatientPolicy, header_values: Iterable[str], subject: str | None) -> bool:
    """`X-MSS-MES: FIN` (preferred) or the older subject marker `[FIN]`."""
    if any(v.strip().upper() == policy.closing_header_value.upper() for v in header_values):
        return True
    return subject is not None and policy.closing_subject_marker.upper() in subject.upper()


def patient_may_write(policy: PatientPolicy, box: Mailbox, ins: Ins, state: str | None) -> Decision:
    """A message from a patient to a box: only into an open conversation, or to a
    pharmacy's box (which the patient may write to first)."""
    if state == "open":
        return allow("patient.reply-in-conversation")
    if box.pharmacy and policy.pharmacy_may_receive_first:
        return allow("patient.pharmacy-first-message")
    if state == "closed":
        return refuse(
            "patient.conversation-closed",
            f"550 5.7.1 The conversation between patient {ins.matricule} and {box.address} "
            "was closed by the professional; only the professional can write again",
        )
    return refuse(
        "patient.no-conversation",
        f"550 5.7.1 Patient {ins.matricule} may only reply: {box.address} has not "
        "written to this patient (only a professional opens a conversation)",
    )
