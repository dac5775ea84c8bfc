"""What changed between two configs, one `ConfigChange` per audit event.

On SIGHUP the daemon loads the new file, computes `diff(old, new)`, writes one audit
event per change and closes the sessions of people who lost access. Details never
carry secrets (password hashes, database passwords).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from relay.config.model import Coholder, Config, Mailbox, Person, Right
from relay.config.summary import describe_upstream, format_rights, format_window, mask_url

__all__ = ["KINDS", "ConfigChange", "diff", "lost_access"]

# Every kind `diff` produces.
KINDS: frozenset[str] = frozenset(
    {
        "server_changed",
        "storage_changed",
        "tls_changed",
        "limits_changed",
        "listeners_changed",
        "routes_changed",
        "person_added",
        "person_removed",
        "person_changed",
        "credentials_changed",
        "mailbox_added",
        "mailbox_removed",
        "mailbox_changed",
        "coholder_added",
        "coholder_removed",
        "rights_changed",
        "window_changed",
    }
)


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """One difference between the running config and the reloaded one."""

    kind: str
    box: str | None
    person: str | None
    detail: str


def _fields_changed(old: object, new: object, names: Iterable[str]) -> list[str]:
    return [
        f"{name}: {getattr(old, name)!s} -> {getattr(new, name)!s}"
        for name in names
        if getattr(old, name) != getattr(new, name)
    ]


def _rights(rights: frozenset[Right]) -> str:
    return format_rights(rights) or "(none)"


def _window(c: Coholder) -> str:
    return format_window(c.valid_from, c.valid_until)


def _people(old: Config, new: Config) -> list[ConfigChange]:
    changes: list[ConfigChange] = []
    before: dict[str, Person] = {p.id: p for p in old.people}
    after: dict[str, Person] = {p.id: p for p in new.people}
    for pid in sorted(before.keys() - after.keys()):
        changes.append(ConfigChange("person_removed", None, pid, f"login {before[pid].login}"))
    for pid in sorted(after.keys() - before.keys()):
        changes.append(ConfigChange("person_added", None, pid, f"login {after[pid].login}"))
    for pid in sorted(before.keys() & after.keys()):
        a, b = before[pid], after[pid]
        details = _fields_changed(a, b, ("display_name", "rpps", "profession"))
        if details:
            changes.append(ConfigChange("person_changed", None, pid, "; ".join(details)))
        creds: list[str] = []
        if a.login != b.login:
            creds.append(f"login: {a.login} -> {b.login}")
        if a.password_hash != b.password_hash:
            # Never the hash itself: say what kind of change it was.
            if a.password_hash is None:
                creds.append("password set")
            elif b.password_hash is None:
                creds.append("password removed")
            else:
                creds.append("password changed")
        removed = sorted(a.certificate_fingerprints - b.certificate_fingerprints)
        added = sorted(b.certificate_fingerprints - a.certificate_fingerprints)
        creds += [f"certificate removed {fp}" for fp in removed]
        creds += [f"certificate added {fp}" for fp in added]
        if creds:
            changes.append(ConfigChange("credentials_changed", None, pid, "; ".join(creds)))
    return changes


def _coholders(box: str, old: Mailbox, new: Mailbox) -> list[ConfigChange]:
    changes: list[ConfigChange] = []
    # The loader allows one entry per person and box, so the person is the key.
    before = {c.person: c for c in old.coholders}
    after = {c.person: c for c in new.coholders}
    for pid in sorted(before.keys() - after.keys()):
        c = before[pid]
        detail = f"rights {_rights(c.rights)}, {_window(c)}"
        changes.append(ConfigChange("coholder_removed", box, pid, detail))
    for pid in sorted(after.keys() - before.keys()):
        c = after[pid]
        detail = f"rights {_rights(c.rights)}, {_window(c)}"
        changes.append(ConfigChange("coholder_added", box, pid, detail))
    for pid in sorted(before.keys() & after.keys()):
        a, b = before[pid], after[pid]
        if a.rights != b.rights:
            detail = f"{_rights(a.rights)} -> {_rights(b.rights)}"
            changes.append(ConfigChange("rights_changed", box, pid, detail))
        if (a.valid_from, a.valid_until) != (b.valid_from, b.valid_until):
            changes.append(
                ConfigChange("window_changed", box, pid, f"{_window(a)} -> {_window(b)}")
            )
    return changes


def _mailboxes(old: Config, new: Config) -> list[ConfigChange]:
    changes: list[ConfigChange] = []
    before = {m.address: m for m in old.mailboxes}
    after = {m.address: m for m in new.mailboxes}
    for address in sorted(before.keys() - after.keys()):
        m = before[address]
        changes.append(ConfigChange("mailbox_removed", address, None, f"type {m.type}"))
    for address in sorted(after.keys() - before.keys()):
        m = after[address]
        detail = f"type {m.type}, owner {m.owner or '-'}, responsible {m.responsible or '-'}"
        changes.append(ConfigChange("mailbox_added", address, None, detail))
        changes += _coholders(address, _empty_like(m), m)
    for address in sorted(before.keys() & after.keys()):
        a, b = before[address], after[address]
        names = ("type", "owner", "structure_id", "responsible", "liste_rouge", "seen", "pharmacy")
        details = _fields_changed(a, b, names)
        if a.upstream != b.upstream:
            details.append(f"upstream {describe_upstream(a)} -> {describe_upstream(b)}")
        if details:
            changes.append(ConfigChange("mailbox_changed", address, None, "; ".join(details)))
        changes += _coholders(address, a, b)
    return changes


def _empty_like(m: Mailbox) -> Mailbox:
    return Mailbox(
        address=m.address,
        type=m.type,
        owner=None,
        structure_id=None,
        responsible=None,
        liste_rouge=False,
        seen=m.seen,
        pharmacy=False,
        coholders=(),
    )


def _describe_listeners(config: Config) -> set[str]:
    return {
        f"{x.kind} {x.host}:{x.port} tls={x.tls}"
        + (" client-cert" if x.require_client_certificate else "")
        + (f" endpoints={','.join(sorted(x.endpoints))}" if x.endpoints else "")
        for x in config.listeners
    }


def _describe_routes(config: Config) -> set[str]:
    return {
        f"{r.domain} -> {'MX' if r.mx else r.host}:{r.port}"
        + (f" dn={r.peer_dn}" if r.peer_dn else "")
        for r in config.routes
    }


def _set_change(kind: str, before: set[str], after: set[str]) -> list[ConfigChange]:
    parts = [f"- {s}" for s in sorted(before - after)] + [f"+ {s}" for s in sorted(after - before)]
    return [ConfigChange(kind, None, None, "; ".join(parts))] if parts else []


def diff(old: Config, new: Config) -> list[ConfigChange]:
    """Every change from `old` to `new`, in a stable order (sections, then sorted keys).

    Co-holders of a newly added box come as `coholder_added` after its `mailbox_added`;
    co-holders of a removed box are covered by its `mailbox_removed`.
    """
    changes: list[ConfigChange] = []
    server = _fields_changed(old.server, new.server, ("hostname", "data_dir", "local_domains"))
    if server:
        changes.append(ConfigChange("server_changed", None, None, "; ".join(server)))
    if old.storage != new.storage:
        detail = (
            f"url {mask_url(old.storage.url)} -> {mask_url(new.storage.url)}; "
            f"key_file {old.storage.key_file} -> {new.storage.key_file}"
        )
        changes.append(ConfigChange("storage_changed", None, None, detail))
    if old.tls != new.tls:
        tls_names = (
            "certificate",
            "key",
            "trust_anchors",
            "crl_files",
            "minimum_version",
            "crl_grace_seconds",
        )
        detail = "; ".join(_fields_changed(old.tls, new.tls, tls_names))
        changes.append(ConfigChange("tls_changed", None, None, detail))
    if old.limits != new.limits:
        limit_names = [f.name for f in dataclasses.fields(old.limits)]
        detail = "; ".join(_fields_changed(old.limits, new.limits, limit_names))
        changes.append(ConfigChange("limits_changed", None, None, detail))
    changes += _set_change("listeners_changed", _describe_listeners(old), _describe_listeners(new))
    changes += _set_change("routes_changed", _describe_routes(old), _describe_routes(new))
    changes += _people(old, new)
    changes += _mailboxes(old, new)
    return changes


def lost_access(old: Config, new: Config, day: dt.date) -> set[tuple[str, str]]:
    """(box, person id) pairs that had some right on `day` under `old` and fewer under `new`.

    The reload closes these sessions (DESIGN.md: revoked co-holders' sessions closed).
    """
    lost: set[tuple[str, str]] = set()
    new_boxes = {m.address: m for m in new.mailboxes}
    new_people = {p.id for p in new.people}
    for box in old.mailboxes:
        holders = {c.person for c in box.coholders}
        if box.owner is not None:
            holders.add(box.owner)
        for pid in holders:
            had = box.rights_of(pid, day)
            if not had:
                continue
            after = new_boxes.get(box.address)
            has = (
                after.rights_of(pid, day)
                if after is not None and pid in new_people
                else frozenset[Right]()
            )
            if not had <= has:
                lost.add((box.address, pid))
    return lost
