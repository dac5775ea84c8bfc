"""Routing (pure): exact route, then wildcard, then the trust space; nothing outside the
trust space. And the SMTP side: a recipient with no route is refused at RCPT time."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from relay.config.model import Route
from relay.delivery.routing import Destination, Unroutable, recipient_domain, route_for
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
