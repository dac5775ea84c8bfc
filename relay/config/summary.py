"""A one-screen, human-readable summary of a loaded config (`mss-relay check-config`)."""

from __future__ import annotations

import datetime as dt
import re

from relay.config.model import Coholder, Config, Mailbox, Right

__all__ = ["format_rights", "format_window", "mask_url", "summary"]


def format_rights(rights: frozenset[Right]) -> str:
    """Rights in their declaration order, comma-separated (`read,flag,send`)."""
    return ",".join(r.value for r in Right if r in rights)


def format_window(valid_from: dt.date | None, valid_until: dt.date | None) -> str:
    """A co-holder's validity window as text (`2026-01-01..2030-12-31`, `always`)."""
    if valid_from is None and valid_until is None:
        return "always"
    start = valid_from.isoformat() if valid_from else ""
    end = valid_until.isoformat() if valid_until else ""
    return f"{start}..{end}"


def mask_url(url: str) -> str:
    """The database URL with any password replaced by `***` (safe to print or audit)."""
    return re.sub(r"^([a-z0-9+]+://[^/:@]*):[^/@]*@", r"\1:***@", url)


def _status(c: Coholder, today: dt.date) -> str:
    if c.valid_until is not None and today > c.valid_until:
        return "  [expired]"
    if c.valid_from is not None and today < c.valid_from:
        return "  [not yet active]"
    return ""


def summary(config: Config, today: dt.date | None = None) -> str:
    """Server, listeners, people count, and each mailbox with its co-holders.

    Co-holders outside their validity window on `today` (default: the local date) are
    marked `[expired]` or `[not yet active]`.
    """
    day = today or dt.date.today()
    s = config.server
    tls = config.tls
    lines = [
        f"config:     {config.path}",
        f"server:     {s.hostname}  (data {s.data_dir})",
        f"domains:    {', '.join(sorted(s.local_domains)) or '-'}",
        f"storage:    {mask_url(config.storage.url)}  (key {config.storage.key_file})",
        f"tls:        minimum {tls.minimum_version}, certificate {tls.certificate or '-'}, "
        f"{len(tls.trust_anchors)} trust anchor file(s), {len(tls.crl_files)} CRL file(s)",
        f"listeners:  {len(config.listeners)}",
    ]
    for x in config.listeners:
        host = f"[{x.host}]" if ":" in x.host else x.host
        cert = "  client certificate required" if x.require_client_certificate else ""
        if x.endpoints:
            cert += "  serves " + ", ".join(sorted(x.endpoints))
        address = f"{host}:{x.port}"
        lines.append(f"  {x.kind.value:<10} {address:<22} {x.tls.value:<8}{cert}")
    lines.append(f"people:     {len(config.people)}")
    lines.append(f"mailboxes:  {len(config.mailboxes)}")
    for m in config.mailboxes:
        extra = [f"owner {m.owner}"] if m.owner else []
        extra += [f"responsible {m.responsible}"] if m.responsible else []
        extra += [f"structure {m.structure_id}"] if m.structure_id else []
        extra += [f"seen {m.seen.value}"]
        extra += ["liste rouge"] if m.liste_rouge else []
        extra += ["pharmacy"] if m.pharmacy else []
        lines.append(f"  {m.address}  {m.type.value}  ({', '.join(extra)})")
        if m.upstream is not None:
            lines.append(f"    hosted at an operator: {describe_upstream(m)}")
        for c in m.coholders:
            window = format_window(c.valid_from, c.valid_until)
            lines.append(
                f"    {c.person:<16} {format_rights(c.rights):<28} {window}{_status(c, day)}"
            )
    lines.append(f"routes:     {len(config.routes)}")
    for r in config.routes:
        target = "MX" if r.mx else f"{r.host}:{r.port}"
        dn = f"  dn {r.peer_dn}" if r.peer_dn else ""
        lines.append(f"  {r.domain} -> {target}{dn}")
    issuer = config.issuer
    if issuer is None:
        lines.append("tokens:     not offered (no [issuer])")
    else:
        keys = f"keys from {issuer.jwks_file}" if issuer.jwks_file else issuer.discovery_url
        acr = f", acr >= {issuer.minimum_acr}" if issuer.minimum_acr else ""
        lines.append(f"tokens:     {issuer.issuer} (client {issuer.client_id}{acr})")
        lines.append(f"  {keys}; person by {issuer.identifier_claim!r}")
        if issuer.dev_signing_key is not None:
            lines.append("  issuer.dev_signing_key is set: a TEST issuer, never for production")
    return "\n".join(lines) + "\n"


def describe_upstream(m: Mailbox) -> str:
    """One line for a box's operator (gateway mode): endpoints, login, credential kind."""
    up = m.upstream
    if up is None:
        return "none"
    credential = "password file" if up.password_file is not None else "certificate"
    sub = up.submission.url("smtps", "smtp") if up.submission is not None else "no submission"
    folders = "all folders" if up.folders is None else ", ".join(up.folders)
    return (
        f"{up.imap.url('imaps', 'imap')} + {sub} as {up.login} ({credential}; {folders}; "
        f"poll {up.poll_interval_seconds} s)"
    )
