"""The DNS records that let clients find this server (`mss-relay dns-records`). Pure.

- RFC 6186 SRV records for IMAP (``_imap``, ``_imaps``) and submission
  (``_submission``), and RFC 8314 §5.1 ``_submissions`` for implicit-TLS submission;
  implicit TLS gets the lower priority value (preferred, RFC 8314 §5.1). POP3 is not
  offered: RFC 6186 §4 says to publish a target of "." for a service that is not
  provided, so clients do not probe for it.
- CNAMEs ``autoconfig.<domain>`` (Thunderbird) and ``autodiscover.<domain>`` (Outlook)
  to the host name, and the ``_autodiscover._tcp`` SRV record Outlook also tries; both
  come on HTTPS port 443, which must reach an HTTP listener serving ``autoconfig``
  (directly, or through a reverse proxy holding a certificate for those names).
"""

from __future__ import annotations

import ipaddress

from relay.config.model import Config, HttpEndpoint, ListenerKind, TlsMode
from relay.web.autoconfig import Security, services

__all__ = ["dns_records"]

TTL_SECONDS = 3600
_PRIORITY = {Security.IMPLICIT: 0, Security.STARTTLS: 10}
_SRV_NAME = {
    ("imap", Security.IMPLICIT): "_imaps",
    ("imap", Security.STARTTLS): "_imap",
    ("smtp", Security.IMPLICIT): "_submissions",
    ("smtp", Security.STARTTLS): "_submission",
}


def _fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


def dns_records(config: Config) -> str:
    """Zone-file lines, one block per local domain, with comments saying why."""
    host = _fqdn(config.server.hostname)
    found = services(config)
    loopback = [
        f"{lc.kind.value} {lc.host}:{lc.port}"
        for lc in config.listeners
        if lc.kind in (ListenerKind.IMAP, ListenerKind.SUBMISSION)
        and ipaddress.ip_address(lc.host).is_loopback
    ]
    autoconfig_served = any(
        lc.kind is ListenerKind.HTTP and HttpEndpoint.AUTOCONFIG in lc.endpoints
        for lc in config.listeners
    )
    plain_only = [
        f"{lc.kind.value} {lc.host}:{lc.port}"
        for lc in config.listeners
        if lc.kind in (ListenerKind.IMAP, ListenerKind.SUBMISSION) and lc.tls is TlsMode.NONE
    ]
    out: list[str] = []
    if loopback:
        out.append(
            "; WARNING: listening on loopback only, clients elsewhere cannot reach: "
            + ", ".join(loopback)
        )
    if plain_only:
        out.append("; not published (plain text): " + ", ".join(plain_only))
    if not autoconfig_served:
        out.append(
            '; no kind = "http" listener serves "autoconfig": the autoconfig and '
            "autodiscover names below would lead nowhere"
        )
    for domain in sorted(config.server.local_domains):
        d = _fqdn(domain)
        out.append(f"\n; {domain}: mail client discovery (RFC 6186, RFC 8314)")
        published: set[str] = set()
        for svc in found:
            if svc.client_certificate:
                continue  # offered by autoconfig; SRV has no way to say "bring a certificate"
            name = _SRV_NAME[(svc.protocol, svc.security)]
            if name in published:
                continue  # one record per service name: the preferred listener
            published.add(name)
            out.append(
                f"{name}._tcp.{d} {TTL_SECONDS} IN SRV {_PRIORITY[svc.security]} 1 "
                f"{svc.port} {host}"
            )
        for name in ("_imaps", "_imap", "_submissions", "_submission"):
            if name not in published:
                out.append(f"{name}._tcp.{d} {TTL_SECONDS} IN SRV 0 0 0 .  ; not offered")
        out.append(f"_pop3s._tcp.{d} {TTL_SECONDS} IN SRV 0 0 0 .  ; no POP3 (RFC 6186 §4)")
        out.append(f"_pop3._tcp.{d} {TTL_SECONDS} IN SRV 0 0 0 .")
        out.append(f"; {domain}: autoconfiguration (HTTPS, port 443)")
        out.append(f"autoconfig.{d} {TTL_SECONDS} IN CNAME {host}")
        out.append(f"autodiscover.{d} {TTL_SECONDS} IN CNAME {host}")
        out.append(f"_autodiscover._tcp.{d} {TTL_SECONDS} IN SRV 0 0 443 {host}")
    return "\n".join(out) + "\n"
