"""Where mail for a remote recipient goes, and whom we expect to find there. Pure.

The order (issue 5; `config/relay.example.toml`, ``[[routes]]``):

1. the route whose ``domain`` is the recipient's domain exactly;
2. else the wildcard route with the longest matching suffix (``*.mssante.fr``
   matches ``a.mssante.fr`` and ``a.b.mssante.fr``, not ``mssante.fr`` itself);
3. else the trust-space entry of the domain: mail goes to the domain's own host
   name, port 25 (the "implicit MX" of RFC 5321 §5.1; no DNS MX query).

Whatever the routes say, the domain must be listed in the MSSanté trust space (the
ANS whitelist): mail is only relayed between listed operators (MSSANTE.md). MX
records are looked up only where the matching route has ``mx = true``.

The peer we expect: the route's ``peer_dn``, else the DN the whitelist lists for the
domain; the peer's certificate subject must then equal it (`relay.tls.peer.dn_equal`).
With neither, the certificate must match the host name (RFC 6125, checked by
OpenSSL). The chain, validity and revocation are always checked in the handshake.

Gateway mode overrides all of this for mail *sent as* a box hosted at an MSSanté
operator (`Mailbox.upstream`): every remote recipient of such a message goes to the
operator's submission service (`operator_route`), authenticated with the box's
credential, never directly to the recipients' operators. The operator is where the
box lives: its traces, its Sent policy and its relay rights are the box's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from relay.config.model import Mailbox, Route, TlsMode
from relay.tls.trust_space import TrustSpaceError, ascii_domain

__all__ = [
    "SMTP_RELAY_PORT",
    "Destination",
    "OperatorSubmission",
    "TrustListing",
    "Unroutable",
    "operator_route",
    "recipient_domain",
    "route_for",
]

SMTP_RELAY_PORT = 25  # RFC 5321 §4.5.4 / the relay port between operators


class TrustListing(Protocol):
    """What routing needs from a trust-space entry (`relay.store.store.TrustEntry`)."""

    @property
    def certificate_dn(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Destination:
    """Where to connect for one recipient domain, and what to verify there."""

    domain: str  # the recipient domain, IDNA ASCII, lower case
    host: str | None  # None: look up the MX records of `domain`
    port: int
    expected_dn: str | None  # None: the certificate must match the host name
    via: str  # which rule chose it, for logs: "route example.fr", "trust space"

    @property
    def connection_key(self) -> tuple[str, int, str | None]:
        """Recipients with the same key can share one connection."""
        return (
            self.host if self.host is not None else f"MX {self.domain}",
            self.port,
            self.expected_dn,
        )


@dataclass(frozen=True, slots=True)
class Unroutable:
    """No way to deliver: `reply` is what SMTP answers at RCPT time (RFC 3463 X.1.2,
    "bad destination system address")."""

    domain: str
    reply: str


@dataclass(frozen=True, slots=True)
class OperatorSubmission:
    """Mail sent as `box` (hosted at an operator) leaves through the operator's
    submission service (RFC 6409): implicit TLS (RFC 8314, 465) or STARTTLS (587),
    the operator's certificate verified against the box's `trust_anchors` and host
    name, AUTH with the box's credential (`relay.delivery.client`)."""

    box: str
    host: str
    port: int
    implicit_tls: bool
    via: str

    @property
    def connection_key(self) -> tuple[str, int, str | None]:
        """One connection per box: each authenticates with its own credential."""
        return (self.host, self.port, f"AUTH {self.box}")

    @property
    def domain(self) -> str:
        return self.host


def operator_route(box: Mailbox | None) -> OperatorSubmission | Unroutable | None:
    """Where mail sent as `box` goes when the box is hosted at an operator; None for a
    box of ours (route by recipient). A hosted box without a submission endpoint
    cannot send (the policy refuses it at MAIL FROM; this covers mail queued before
    a reload removed the endpoint)."""
    if box is None or box.upstream is None:
        return None
    sub = box.upstream.submission
    if sub is None:
        return Unroutable(
            box.address,
            f"550 5.7.1 {box.address} is hosted at an operator and has no submission "
            "endpoint configured (mailboxes.upstream.submission)",
        )
    return OperatorSubmission(
        box=box.address,
        host=sub.host,
        port=sub.port,
        implicit_tls=sub.tls is TlsMode.IMPLICIT,
        via=f"operator submission {sub.url('smtps', 'smtp')} for {box.address}",
    )


def recipient_domain(address: str) -> str | None:
    """The IDNA ASCII, lower-case domain of `address`, or None if it has none usable."""
    _, at, domain = address.rpartition("@")
    if not at or not domain:
        return None
    try:
        return ascii_domain(domain)
    except TrustSpaceError:
        return None


def _match(domain: str, routes: Sequence[Route]) -> Route | None:
    best: Route | None = None
    for route in routes:
        if route.domain == domain:
            return route
        if route.domain.startswith("*."):
            suffix = route.domain[1:]  # ".mssante.fr"
            if domain.endswith(suffix) and (best is None or len(route.domain) > len(best.domain)):
                best = route
    return best


def route_for(
    domain: str | None, routes: Sequence[Route], listing: TrustListing | None
) -> Destination | Unroutable:
    """The destination for mail to `domain` (from `recipient_domain`).

    `listing` is the domain's trust-space entry, None when the domain is not listed.
    """
    if domain is None:
        return Unroutable("", "550 5.1.2 Recipient domain is not a valid domain name")
    if listing is None:
        return Unroutable(
            domain,
            # ASCII only: reply text (RFC 5321 §4.2)
            f"550 5.1.2 {domain} is not in the MSSante trust space: no route to it",
        )
    route = _match(domain, routes)
    if route is None:
        return Destination(
            domain=domain,
            host=domain,
            port=SMTP_RELAY_PORT,
            expected_dn=listing.certificate_dn,
            via="trust space",
        )
    return Destination(
        domain=domain,
        host=None if route.mx else route.host,
        port=route.port,
        expected_dn=route.peer_dn or listing.certificate_dn,
        via=f"route {route.domain}",
    )
