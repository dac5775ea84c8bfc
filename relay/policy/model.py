"""Policies as data: `policies/mssante.toml` and `policies/patient.toml` (pure).

Each key is documented in the shipped files; the defaults here are the same values, so
a deployment without a policy folder behaves as one with the shipped files (a test
checks the two agree). Unknown keys and wrong types are errors naming file and key,
like the config.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from relay.config.loader import Problem
from relay.config.syntax import describe_syntax_error

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PatientPolicy:
    """Patient messaging ("messagerie citoyenne", Mon espace santé), MSSANTE.md."""

    # Addresses <15-character INS>@domain are patients.
    domain: str = "patient.mssante.fr"
    # Mon espace santé bounces messages over 25 MB: refuse them at the door instead.
    max_message_bytes: int = 25 * MIB
    # A patient may write first to a box marked `pharmacy = true` (a pharmacy that
    # dispensed to them within the past year; the daemon cannot check the dispensing).
    pharmacy_may_receive_first: bool = True
    # Closing a conversation: the header (preferred) or the older subject marker.
    closing_header: str = "X-MSS-MES"
    closing_header_value: str = "FIN"
    closing_subject_marker: str = "[FIN]"
    # One patient per message: several different INS in one message are refused.
    one_patient_per_message: bool = True
    # An IHE_XDM.ZIP whose METADATA.XML names another patient than the recipient is
    # refused (a document for patient A addressed to patient B).
    check_xdm_patient: bool = True
    # Largest METADATA.XML read from an IHE_XDM.ZIP (zip bombs).
    max_xdm_metadata_bytes: int = 4 * MIB


@dataclass(frozen=True, slots=True)
class MssantePolicy:
    """Rules of the MSSanté trust space."""

    # Inbound: the sender's domain must be in the imported ANS whitelist.
    inbound_requires_listed_domain: bool = True
    # Inbound: the peer's certificate subject must be the DN the whitelist lists for
    # the sender's domain; a domain listed without a DN accepts no certificate.
    inbound_requires_matching_dn: bool = True


@dataclass(frozen=True, slots=True)
class Policies:
    mssante: MssantePolicy = field(default_factory=MssantePolicy)
    patient: PatientPolicy = field(default_factory=PatientPolicy)


class PolicyError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = tuple(problems)


FILES: dict[str, type[Any]] = {"mssante.toml": MssantePolicy, "patient.toml": PatientPolicy}


def _read(path: Path, cls: type[Any], problems: list[Problem]) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except OSError as exc:
        problems.append(Problem(str(path), "<file>", f"cannot read: {exc.strerror}"))
        return cls()
    except UnicodeDecodeError:
        problems.append(Problem(str(path), "<file>", "not valid UTF-8"))
        return cls()
    except tomllib.TOMLDecodeError as exc:
        problems.append(Problem(str(path), *describe_syntax_error(text, exc)))
        return cls()
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        f = known.get(key)
        if f is None:
            problems.append(Problem(str(path), key, "unknown key"))
            continue
        default = getattr(cls(), key)
        expected = type(default)
        if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, expected):
            problems.append(Problem(str(path), key, f"expected {expected.__name__}, got {value!r}"))
            continue
        if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            problems.append(Problem(str(path), key, "must be a positive integer"))
            continue
        if isinstance(value, str) and not value.strip():
            problems.append(Problem(str(path), key, "must not be empty"))
            continue
        values[key] = value.lower() if key == "domain" else value
    return cls(**values)


def load_policies(directory: Path | None) -> Policies:
    """Read the policy folder; None or a missing file means the built-in defaults."""
    if directory is None:
        return Policies()
    problems: list[Problem] = []
    if not directory.is_dir():
        raise PolicyError([Problem(str(directory), "<dir>", "policy folder not found")])
    loaded: dict[str, Any] = {}
    for name, cls in FILES.items():
        path = directory / name
        loaded[name] = _read(path, cls, problems) if path.exists() else cls()
    if problems:
        raise PolicyError(problems)
    return Policies(mssante=loaded["mssante.toml"], patient=loaded["patient.toml"])
