"""Routing (pure): exact route, then wildcard, then the trust space; nothing outside the
trust space. And the SMTP side: a recipient with no route is refused at RCPT time."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.config.model import (
    BoxType,
    Endpoint,
    Mailbox,
    Route,
    SeenMode,
    TlsMode,
    UpstreamConfig,
)
from relay.delivery.routing import (
    Destination,
    OperatorSubmission,
    Unroutable,
    operator_route,
    recipient_domain,
    route_for,
)
from relay.store.store import AuditFilter
from tests.delivery.conftest import DR_X, submit
from tests.harness import SHARED, RunningDaemon


@dataclass(frozen=True)
class Listing:
    certificate_dn: str | None


LISTED = Listing("CN=mx.listed,O=LISTED,C=FR")
ROUTES = (
    Route("patient.mssante.fr", "mx.patient.example", 2525, "CN=patient,O=ANS,C=FR", mx=False),
    Route("*.mssante.fr", "", 25, None, mx=True),
    Route("*.hop.mssante.fr", "relay.hop.example", 25, None, mx=False),
    Route("ch-voisin.fr", "relais.ch-voisin.fr", 25, None, mx=False),
)


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        # exact route: its host, port and DN
        (
            "patient.mssante.fr",
            Destination(
                "patient.mssante.fr", "mx.patient.example", 2525, "CN=patient,O=ANS,C=FR",
                "route patient.mssante.fr",
            ),
        ),
        # the longest wildcard wins; the DN comes from the trust space
        (
            "a.hop.mssante.fr",
            Destination(
                "a.hop.mssante.fr", "relay.hop.example", 25, LISTED.certificate_dn,
                "route *.hop.mssante.fr",
            ),
        ),
        # wildcard with mx = true: no host, MX lookup of the domain
        (
            "cpts-b.mssante.fr",
            Destination("cpts-b.mssante.fr", None, 25, LISTED.certificate_dn, "route *.mssante.fr"),
        ),
        # a wildcard does not match the bare suffix: the trust space entry then
        (
            "mssante.fr",
            Destination("mssante.fr", "mssante.fr", 25, LISTED.certificate_dn, "trust space"),
        ),
        (
            "operateur.example",
            Destination(
                "operateur.example", "operateur.example", 25, LISTED.certificate_dn, "trust space"
            ),
        ),
    ],
)  # fmt: skip
def test_route_order(domain: str, expected: Destination) -> None:
    assert route_for(domain, ROUTES, LISTED) == expected


def test_nothing_outside_the_trust_space_whatever_the_routes() -> None:
    result = route_for("ch-voisin.fr", ROUTES, None)
    assert result == Unroutable(
        "ch-voisin.fr", "550 5.1.2 ch-voisin.fr is not in the MSSante trust space: no route to it"
    )
    assert isinstance(route_for(None, ROUTES, LISTED), Unroutable)


def test_no_dn_anywhere_means_the_host_name_is_checked() -> None:
    dest = route_for("ch-voisin.fr", ROUTES, Listing(None))
    assert isinstance(dest, Destination) and dest.expected_dn is None


def test_connection_key_groups_domains_sharing_a_relay() -> None:
    a = route_for("a.hop.mssante.fr", ROUTES, LISTED)
    b = route_for("b.hop.mssante.fr", ROUTES, LISTED)
    c = route_for("c.mssante.fr", ROUTES, LISTED)
    d = route_for("d.mssante.fr", ROUTES, LISTED)
    assert isinstance(a, Destination) and isinstance(b, Destination)
    assert isinstance(c, Destination) and isinstance(d, Destination)
    assert a.connection_key == b.connection_key  # one relay host
    assert c.connection_key != d.connection_key  # MX of each domain


@pytest.mark.parametrize(
    ("address", "domain"),
    [
        ("Dr.X@Peer.MSSante.fr", "peer.mssante.fr"),
        ("x@hôpital.example", "xn--hpital-ixa.example"),
        ("no-domain", None),
        ("x@", None),
        ("x@bad..domain", None),
    ],
)
def test_recipient_domain(address: str, domain: str | None) -> None:
    assert recipient_domain(address) == domain


async def test_submission_refuses_a_recipient_without_route_at_rcpt(
    daemon: RunningDaemon,
) -> None:
    # peer.mssante.fr is not (yet) in the trust space
    code, reply = await submit(daemon, [DR_X])
    assert code == 550
    assert reply == b"5.1.2 peer.mssante.fr is not in the MSSante trust space: no route to it"
    [event] = await daemon.store.audit_rows(AuditFilter(action="message.refused"))
    details = json.loads(event.data)["details"]
    assert (details["stage"], details["rule"], details["recipient"]) == (
        "rcpt",
        "recipient.no-route",
        DR_X,
    )
    assert await daemon.store.queue_rows() == []
    # listed: accepted (and queued), local recipients unaffected
    await daemon.trust_peer()
    code, reply = await submit(daemon, [DR_X, SHARED])
    assert code == 250, reply
    assert [r["recipient"] for r in await daemon.store.queue_rows()] == [DR_X]


def _hosted(submission: Endpoint | None) -> Mailbox:
    up = UpstreamConfig(
        imap=Endpoint("imap.op.example", 993, TlsMode.IMPLICIT),
        submission=submission,
        login="box",
        password_file=Path("/nonexistent"),
        certificate=None,
        key=None,
        trust_anchors=(Path("/nonexistent"),),
        crl_files=(),
        folders=None,
    )
    return Mailbox(
        address="cpts@op.mssante.fr",
        type=BoxType.ORG,
        owner=None,
        structure_id=None,
        responsible=None,
        liste_rouge=False,
        seen=SeenMode.SHARED,
        pharmacy=False,
        coholders=(),
        upstream=up,
    )


def test_operator_route_for_hosted_boxes_only() -> None:
    """Mail sent as a box hosted at an operator goes to its submission endpoint, one
    connection per box; a box of ours routes by recipient (None)."""
    assert operator_route(None) is None
    assert operator_route(dataclasses.replace(_hosted(None), upstream=None)) is None
    starttls = operator_route(_hosted(Endpoint("smtp.op.example", 587, TlsMode.STARTTLS)))
    assert starttls == OperatorSubmission(
        "cpts@op.mssante.fr",
        "smtp.op.example",
        587,
        False,
        "operator submission smtp://smtp.op.example:587 for cpts@op.mssante.fr",
    )
    assert starttls.connection_key == ("smtp.op.example", 587, "AUTH cpts@op.mssante.fr")
    implicit = operator_route(_hosted(Endpoint("smtp.op.example", 465, TlsMode.IMPLICIT)))
    assert isinstance(implicit, OperatorSubmission) and implicit.implicit_tls
    # Without a submission endpoint (a reload removed it after queuing): unroutable.
    none = operator_route(_hosted(None))
    assert isinstance(none, Unroutable) and "no submission endpoint" in none.reply
