"""INS matricule (NIR / NIA) parsing and key check. Pure: no I/O.

An INS matricule is 15 characters: a 13-character body and a 2-digit key, with
key = 97 − (N mod 97) where N is the body read as an integer, Corsican departments
``2A`` and ``2B`` (positions 6–7) counting as ``19`` and ``18`` (MSSANTE.md, "INS key").
A patient's MSSanté address is ``<matricule>@patient.mssante.fr``.

What is checked, and why no more:

* Length, characters, first digit and key. These are all the structural rules we could
  find stated by a primary source.
* First digit: ``1``/``2`` (NIR, men/women) is stated by service-public.fr (DILA,
  "Que signifie le numéro de sécurité sociale ?", F33078) and by the Ministry of social
  affairs' note on identification rules. ``7``/``8`` mark provisional numbers: the
  Assurance Maladie's own validator (github.com/assurance-maladie-digital/nir-validation,
  ``NnpValidator``: "7 pour un homme et 8 pour une femme") uses them; we read them as NIA.
  ``3``/``4`` appear only in Wikipedia-derived code (e.g. "foreigners being registered");
  no primary source was found, so they are rejected with a message that says so.
  Caveat: a NIA "est constitué comme un NIR" (net-entreprises.fr), so a NIA may also begin
  with 1/2; ``Ins.kind`` is a reading of the first digit, not the authority. The
  authoritative NIR/NIA distinction is the assigning-authority OID carried next to the
  matricule (1.2.250.1.213.1.4.8 NIR, .9 NIA), which an e-mail address does not carry.
* The month field (positions 4–5) is NOT checked. Secondary sources say INSEE uses
  fictitious months (20–42, 50–99) for incomplete civil records, while the Assurance
  Maladie validator accepts only 01–12; with no primary rule, rejecting a real patient's
  number would be worse than accepting an odd month, so every two-digit month passes.
* Test identities: the FR Core FHIR profile (github.com/Interop-Sante/FHIR-FR-Core,
  ``FRCorePatientINSProfile``) marks test and demonstration INS by their assigning
  authority OIDs 1.2.250.1.213.1.4.10 ("INS-NIR de test") and .11 ("de démonstration"),
  not by a number range. So the matricule alone cannot tell a test INS: ``is_test`` is
  true only for matricules starting with a prefix the deployment lists (see
  ``DEFAULT_TEST_PREFIXES``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_TEST_PREFIXES",
    "PATIENT_DOMAIN",
    "Ins",
    "InsError",
    "InsKind",
    "InsProblem",
    "compute_key",
    "explain",
    "mask",
    "mask_in_text",
    "parse_ins",
    "parse_patient_address",
]

PATIENT_DOMAIN = "patient.mssante.fr"  # MSSANTE.md, "Patient messaging" [H]

# Matricule prefixes treated as test identities. Empty on purpose: no number range is
# documented for test INS (they are told apart by OID, see the module docstring). A
# deployment that exchanges with a test platform passes its known test matricules or
# prefixes to `parse_ins(..., test_prefixes=...)`.
DEFAULT_TEST_PREFIXES: frozenset[str] = frozenset()

MATRICULE_LENGTH = 15
BODY_LENGTH = 13
_CORSICA = {"2A": "19", "2B": "18"}  # positions 6-7, MSSANTE.md "INS key" [H]
_NIR_FIRST = frozenset("12")
_NIA_FIRST = frozenset("78")
_UNSOURCED_FIRST = frozenset("34")
# A bad input is echoed back (escaped) in SMTP replies: bound it well under the 512
# octets of a reply line (RFC 5321 §4.5.3.1.5).
_SHOW_MAX = 48


class InsKind(enum.StrEnum):
    """What the first digit says the matricule is."""

    NIR = "NIR"  # numéro d'inscription au répertoire (RNIPP)
    NIA = "NIA"  # numéro d'identification d'attente (provisional)


class InsProblem(enum.StrEnum):
    """Why a text is not a valid INS matricule."""

    LENGTH = "length"
    CHARACTERS = "characters"
    KIND = "kind"
    KEY = "key"


class InsError(ValueError):
    """A text that is not a valid INS matricule.

    ``message`` is one plain ASCII sentence naming the (sanitised) input and the problem,
    fit for an SMTP ``550 5.1.3`` reply and for the CLI.
    """

    # RFC 3463 §3.2: X.1.3 "Bad destination mailbox address syntax".
    SMTP_CODE = 550
    ENHANCED_STATUS = "5.1.3"

    def __init__(self, code: InsProblem, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def smtp_reply(self) -> str:
        """The SMTP reply line (without CRLF) for a recipient with this INS."""
        return f"{self.SMTP_CODE} {self.ENHANCED_STATUS} {self.message}"


@dataclass(frozen=True, slots=True)
class Ins:
    """A structurally valid INS matricule (15 characters, key checked)."""

    matricule: str  # canonical: 15 characters, Corsican letters upper case
    kind: InsKind
    key: int
    is_test: bool = False

    @property
    def body(self) -> str:
        """The 13 characters before the key."""
        return self.matricule[:BODY_LENGTH]

    def patient_address(self, domain: str = PATIENT_DOMAIN) -> str:
        """The patient's MSSanté address, ``<matricule>@<domain>``."""
        return f"{self.matricule}@{domain}"


def _show(text: str) -> str:
    """The input as it may appear in a message: printable ASCII, bounded, one line."""
    shown = ""
    for ch in text:
        if len(shown) >= _SHOW_MAX:
            shown += "..."
            break
        if " " <= ch <= "~":
            shown += ch
        elif ord(ch) <= 0xFF:
            shown += f"\\x{ord(ch):02x}"
        else:
            shown += f"\\u{ord(ch):04x}"
    if shown == text and text and " " not in text:
        return text
    return f'"{shown}"'


def compute_key(body: str) -> int:
    """The key 97 − (N mod 97) of a 13-character body (2A → 19, 2B → 18).

    The body must already be well formed (digits, Corsican letters only at 6–7).
    """
    digits = body[:5] + _CORSICA.get(body[5:7].upper(), body[5:7]) + body[7:]
    return 97 - int(digits) % 97


def _bad_character(text: str) -> tuple[int, str] | None:
    """The first (1-based position, character) that is not allowed, or None."""
    for index, ch in enumerate(text):
        if "0" <= ch <= "9":
            continue
        # MSSANTE.md "INS key": 2A/2B only as the Corsican department, positions 6-7.
        if index == 6 and ch in "ABab" and text[5] == "2":
            continue
        return index + 1, ch
    return None


def parse_ins(text: str, *, test_prefixes: Iterable[str] = DEFAULT_TEST_PREFIXES) -> Ins:
    """Parse and check an INS matricule; raise `InsError` saying what is wrong.

    Lower-case ``2a``/``2b`` are accepted and canonicalised to upper case (mail systems
    may lower-case local parts). No spaces or separators are accepted.
    """
    shown = _show(text)
    if len(text) != MATRICULE_LENGTH:
        raise InsError(
            InsProblem.LENGTH,
            f"INS {shown}: {len(text)} characters given, an INS has exactly 15 "
            "(13-character matricule and 2-digit key)",
        )
    bad = _bad_character(text)
    if bad is not None:
        position, ch = bad
        if ch in "ABab" and position in (6, 7):
            detail = "A or B is only allowed at position 7, after a 2 (Corsica: 2A, 2B)"
        else:
            detail = "only digits are allowed, and 2A or 2B at positions 6-7 (Corsica)"
        raise InsError(
            InsProblem.CHARACTERS,
            f"INS {shown}: character {_show(ch)} at position {position} is not allowed; {detail}",
        )
    matricule = text.upper()
    first = matricule[0]
    if first in _NIR_FIRST:
        kind = InsKind.NIR
    elif first in _NIA_FIRST:
        kind = InsKind.NIA
    else:
        why = "an INS starts with 1 or 2 (NIR) or 7 or 8 (NIA, provisional number)"
        if first in _UNSOURCED_FIRST:
            why += "; 3 and 4 are not documented by any official source"
        raise InsError(
            InsProblem.KIND,
            f"INS {shown}: the first digit {first} is not a valid sex/kind digit; {why}",
        )
    expected = compute_key(matricule[:BODY_LENGTH])
    key = int(matricule[BODY_LENGTH:])
    if key != expected:
        raise InsError(
            InsProblem.KEY,
            f"INS {shown}: the key is {matricule[BODY_LENGTH:]} but should be "
            f"{expected:02d} (97 - N mod 97)",
        )
    is_test = any(matricule.startswith(prefix.upper()) for prefix in test_prefixes)
    return Ins(matricule=matricule, kind=kind, key=key, is_test=is_test)


def parse_patient_address(address: str, domain: str = PATIENT_DOMAIN) -> Ins | None:
    """The INS of a patient address, or None when `address` is not in `domain`.

    The domain compares case-insensitively (RFC 5321 §2.4); a bad local part in the
    patient domain raises `InsError`.
    """
    local, at, addr_domain = address.rpartition("@")
    if not at or addr_domain.lower().rstrip(".") != domain.lower().rstrip("."):
        return None
    return parse_ins(local)


def explain(text: str, *, test_prefixes: Iterable[str] = DEFAULT_TEST_PREFIXES) -> str:
    """One line for ``mss-relay ins check``: what the number is, or what is wrong.

    Spaces, dots and dashes people use to group digits are removed first.
    """
    compact = "".join(ch for ch in text.strip() if ch not in " .-")
    try:
        ins = parse_ins(compact, test_prefixes=test_prefixes)
    except InsError as exc:
        return f"invalid: {exc.message}"
    what = "NIR" if ins.kind is InsKind.NIR else "NIA (provisional number)"
    test = ", test identity" if ins.is_test else ""
    return f"valid {what} {ins.matricule}, key {ins.key:02d}{test}"


# An INS-shaped token in free text: 15 characters, the 13-character body (digits, or
# 2A/2B for Corsica at positions 6-7) and the key, not inside a longer word (queue ids
# and hashes are hex strings of 16 and more). The key is not checked: a mistyped INS
# still names a patient.
_INS_IN_TEXT = re.compile(r"(?<![0-9A-Za-z])[0-9]{5}(?:[0-9]{2}|2[ABab])[0-9]{8}(?![0-9A-Za-z])")


def mask(matricule: str) -> str:
    """How an INS is shown in logs: its first 3 and last 2 characters, ``279…89``.

    Enough to tell two patients apart when reading a log next to the audit trail
    (which keeps the full value, in the database); not enough to name anyone.
    """
    return f"{matricule[:3]}\u2026{matricule[-2:]}"


def mask_in_text(text: str) -> str:
    """`text` with every INS-shaped token masked (`mask`), addresses included."""
    return _INS_IN_TEXT.sub(lambda m: mask(m.group(0)), text)
