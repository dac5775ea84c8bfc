"""Audit rows out of the store: readable lines for `audit show`, JSON lines for export,
optionally encrypted with GnuPG to the responsible professional's public key (a DPO
request or an inquiry gets a file only that person can open)."""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path

import gnupg

from relay.audit.chain import AuditRow
from relay.errors import RelayError


class ExportError(RelayError):
    pass


def row_to_json(row: AuditRow) -> str:
    data = json.loads(row.data)
    return json.dumps(
        {
            "seq": row.seq,
            "ts": row.ts,
            "action": row.action,
            "person": row.person,
            "box": row.box,
            "peer": row.peer,
            **data,
            "hash": row.hash,
        },
        ensure_ascii=False,
        sort_keys=True,
    )


def render_row(row: AuditRow) -> str:
    """One line for a person reading the trail: local time, who, box, what, details."""
    when = dt.datetime.fromisoformat(row.ts).astimezone().strftime("%Y-%m-%d %H:%M:%S%z")
    data = json.loads(row.data)
    parts = [f"#{row.seq}", when, row.action, f"person={row.person or '-'}"]
    if row.box:
        parts.append(f"box={row.box}")
    if row.peer:
        parts.append(f"peer={row.peer}")
    for key in ("request", "answer"):
        if data.get(key):
            parts.append(f"{key}={data[key]!r}")
    for key, value in sorted((data.get("details") or {}).items()):
        if value not in (None, [], ""):
            parts.append(f"{key}={value}")
    return "  ".join(parts)


def json_lines(rows: Iterable[AuditRow]) -> bytes:
    return "".join(row_to_json(r) + "\n" for r in rows).encode()


def encrypt_to(public_key_file: Path, plaintext: bytes) -> tuple[bytes, str]:
    """Encrypt for the key in `public_key_file` (ASCII-armoured OpenPGP).

    A throw-away GnuPG home is used, so the admin's own keyring is neither read nor
    changed. Returns the armoured message and the recipient's fingerprint.
    """
    try:
        key_data = public_key_file.read_bytes()
    except OSError as exc:
        raise ExportError(
            f"{public_key_file}: cannot read the public key ({exc.strerror})"
        ) from exc
    with tempfile.TemporaryDirectory(prefix="mss-relay-gpg-") as home:
        gpg = gnupg.GPG(gnupghome=home)
        imported = gpg.import_keys(key_data)
        fingerprints = [f for f in imported.fingerprints if f]
        if not fingerprints:
            raise ExportError(f"{public_key_file}: no OpenPGP public key found in the file")
        if len(fingerprints) > 1:
            raise ExportError(
                f"{public_key_file}: holds {len(fingerprints)} keys; give exactly one recipient"
            )
        result = gpg.encrypt(plaintext, fingerprints[0], always_trust=True, armor=True)
        if not result.ok:
            raise ExportError(f"GnuPG could not encrypt: {result.status}")
        return bytes(result.data), fingerprints[0]
