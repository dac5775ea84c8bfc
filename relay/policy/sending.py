"""Who may send as which box (pure).

A person may send as a box they own, or as a box they co-hold with the `send` right
inside its validity window (MSSANTE.md: co-holders of an ORG/CAB box). When a session
authorised as a box (SASL authzid or `person*box`), it may send only as that box.
A box hosted at an operator (gateway mode) sends only through the operator's
submission service: without one configured, nobody may send as it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from relay.config.model import AuthMethod, Config, Mailbox, Person, Right


@dataclass(frozen=True, slots=True)
class SendVerdict:
    allowed: bool
    box: Mailbox | None
    reply: str  # SMTP reply when refused, "" when allowed
    rule: str


def may_send_as(
    config: Config,
    person: Person,
    address: str,
    day: dt.date,
    *,
    session_box: str | None = None,
    method: AuthMethod | None = None,
) -> SendVerdict:
    """Decide whether `person` may use `address` as envelope sender or From."""
    address = address.lower()
    if session_box is not None and address != session_box:
        return SendVerdict(
            False,
            None,
            f"550 5.7.1 This session acts as {session_box}; it may not send as {address}",
            "send-as.session-box",
        )
    box = config.mailbox(address)
    if box is None:
        return SendVerdict(
            False,
            None,
            f"550 5.7.1 {address} is not a mailbox of this server; send from a box you hold",
            "send-as.unknown-box",
        )
    if method is not None and method not in box.auth_methods:
        allowed = " or ".join(m.value for m in AuthMethod if m in box.auth_methods)
        return SendVerdict(
            False,
            box,
            f"550 5.7.1 {address} accepts only {allowed} logins; this session logged in "
            f"with {method.value}",
            "send-as.auth-method",
        )
    rights = box.rights_of(person.id, day)
    if box.upstream is not None and box.upstream.submission is None and Right.SEND in rights:
        return SendVerdict(
            False,
            box,
            f"550 5.7.1 {address} is hosted at an operator and this server has no "
            "submission endpoint for it: it cannot send",
            "send-as.no-operator-submission",
        )
    if Right.SEND in rights:
        return SendVerdict(True, box, "", "send-as.allowed")
    if any(c.person == person.id for c in box.coholders):
        if rights:
            why = f"your rights on {address} do not include 'send'"
        else:
            why = f"your co-holding of {address} is not valid on {day.isoformat()}"
        return SendVerdict(False, box, f"550 5.7.1 {why}", "send-as.missing-right")
    return SendVerdict(
        False,
        box,
        f"550 5.7.1 {person.login} may not send as {address}: not a co-holder "
        "with the 'send' right",
        "send-as.not-coholder",
    )
