"""INS matricule parsing: examples, a table of bad inputs, and properties.

Why the mod-97 key catches every single-character change and every swap of two
adjacent different characters (the properties below check both exhaustively at random):

Write V for the 13-character body read as an integer (2A → 19, 2B → 18) and K for the
key. A matricule is valid iff K = 97 − (V mod 97), i.e. iff 1 ≤ K ≤ 97 and
V + K ≡ 0 (mod 97). 97 is prime, so it divides a product only if it divides a factor.

* Change one body digit at weight 10^k by d (0 < |d| ≤ 9): V moves by d·10^k; 97 divides
  neither d nor 10^k, so V + K is no longer ≡ 0. Change one key digit: K moves by d or
  10·d, V does not; same argument.
* Corsica: A → B moves "19" to "18" (−1·10^6); A → digit c moves 19 to 20 + c
  ((1 + c)·10^6, 1 ≤ 1 + c ≤ 10); digit c → A (after a 2) is the reverse. None is 0 mod
  97. Every other change involving a letter breaks the character rule (letters only at
  position 7 after a 2), so the parser rejects it before the key.
* Swap adjacent digits a ≠ b inside the body at weights 10^(k+1), 10^k: V moves by
  (a − b)·9·10^k, not a multiple of 97. Inside the key: K moves by 9·(a − b), V does not.
  Across the boundary (last body digit a, first key digit b): V moves by (b − a) and K by
  10·(a − b), so V + K moves by −9·(b − a) ≢ 0.
* Swaps involving a Corsican letter put a letter at position 6 or 8, or leave "A"/"B" at
  7 after a digit other than 2: rejected by the character rule.

A change of the first digit may also be rejected by the kind rule first; that is still a
rejection. So neither property needs restricting; the only excluded "change" is A ↔ a,
which is the same number (the parser canonicalises case).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.ins import (
    PATIENT_DOMAIN,
    Ins,
    InsError,
    InsKind,
    InsProblem,
    explain,
    parse_ins,
    parse_patient_address,
)

MSSANTE_EXAMPLES = ["295109912611193", "253072A07300443", "253072B07300470", "279035121518989"]


def reference_key(body: str) -> int:
    """Key computed independently of the module under test (MSSANTE.md formula)."""
    number = body[:5] + {"2A": "19", "2B": "18"}.get(body[5:7], body[5:7]) + body[7:]
    return 97 - int(number) % 97


def with_key(body: str) -> str:
    return body + f"{reference_key(body):02d}"


@pytest.mark.parametrize("text", MSSANTE_EXAMPLES)
def test_mssante_examples_are_valid(text: str) -> None:
    ins = parse_ins(text)
    assert ins.matricule == text
    assert ins.kind is InsKind.NIR
    assert ins.key == int(text[13:])
    assert ins.body == text[:13]
    assert not ins.is_test


def test_reference_key_agrees_with_the_examples() -> None:
    # Guards the test helper itself: a wrong helper would make the properties vacuous.
    for text in MSSANTE_EXAMPLES:
        assert f"{reference_key(text[:13]):02d}" == text[13:]


def test_nia_first_digits() -> None:
    for first in "78":
        ins = parse_ins(with_key(first + "790351215189"))
        assert ins.kind is InsKind.NIA


def test_lower_case_corsica_is_canonicalised() -> None:
    ins = parse_ins("253072a07300443")
    assert ins.matricule == "253072A07300443"
    assert ins == parse_ins("253072A07300443")


INVALID = [
    ("", InsProblem.LENGTH),
    ("27903512151898", InsProblem.LENGTH),
    ("2790351215189890", InsProblem.LENGTH),
    ("279035121518989@", InsProblem.LENGTH),
    ("27903512151898X", InsProblem.CHARACTERS),
    ("2790351215 8989", InsProblem.CHARACTERS),
    ("25307A207300443", InsProblem.CHARACTERS),  # letter at position 6
    ("253073A07300443", InsProblem.CHARACTERS),  # 3A is not a department
    ("253072C07300443", InsProblem.CHARACTERS),  # only 2A and 2B
    ("2530720A7300443", InsProblem.CHARACTERS),  # letter at position 8
    ("2A3072007300443", InsProblem.CHARACTERS),  # 2A elsewhere than positions 6-7
    (
        "２７９０３５１２１５１８９８９",
        InsProblem.CHARACTERS,
    ),  # full-width digits: int() takes them
    ("٢٧٩٠٣٥١٢١٥١٨٩٨٩", InsProblem.CHARACTERS),  # Arabic-Indic digits
    ("27903512151898\n", InsProblem.CHARACTERS),
    (with_key("3790351215189"), InsProblem.KIND),  # 3/4: no primary source
    (with_key("4790351215189"), InsProblem.KIND),
    (with_key("0790351215189"), InsProblem.KIND),
    (with_key("5790351215189"), InsProblem.KIND),
    (with_key("6790351215189"), InsProblem.KIND),
    (with_key("9790351215189"), InsProblem.KIND),
    ("279035121518988", InsProblem.KEY),
    ("279035121518900", InsProblem.KEY),
    ("279035121518998", InsProblem.KEY),
    ("279035121518999", InsProblem.KEY),
    ("253072A07300470", InsProblem.KEY),  # the key of 2B on a 2A number
]


@pytest.mark.parametrize(("text", "problem"), INVALID)
def test_invalid_inputs(text: str, problem: InsProblem) -> None:
    with pytest.raises(InsError) as caught:
        parse_ins(text)
    assert caught.value.code is problem
    assert caught.value.message == str(caught.value)


def test_department_19_shares_the_key_of_2a() -> None:
    # 2A counts as 19 (Corsica's single code before 1976), so the same body with 19
    # written out is a different, equally valid number with the same key.
    assert parse_ins("253071907300443").key == parse_ins("253072A07300443").key == 43


def test_key_message_names_the_ins_and_both_keys() -> None:
    with pytest.raises(InsError) as caught:
        parse_ins("279035121518988")
    assert caught.value.message == (
        "INS 279035121518988: the key is 88 but should be 89 (97 - N mod 97)"
    )
    assert caught.value.smtp_reply() == "550 5.1.3 " + caught.value.message


def test_length_message_says_how_many() -> None:
    with pytest.raises(InsError) as caught:
        parse_ins("27903512151898")
    assert "14 characters given" in caught.value.message
    assert "exactly 15" in caught.value.message


def test_kind_message_explains_3_and_4() -> None:
    with pytest.raises(InsError) as caught:
        parse_ins(with_key("3790351215189"))
    assert "first digit 3" in caught.value.message
    assert "not documented" in caught.value.message


def test_character_message_names_position() -> None:
    with pytest.raises(InsError) as caught:
        parse_ins("2530720A7300443")
    assert "position 8" in caught.value.message


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_parses_or_raises_a_safe_error(text: str) -> None:
    # h11-style fuzz: any input gives an Ins or an InsError, and the message can go into
    # an SMTP reply as is: printable ASCII, one line, bounded.
    try:
        ins = parse_ins(text)
    except InsError as exc:
        assert exc.message.isascii()
        assert exc.message.isprintable()
        assert len(exc.smtp_reply()) < 510  # RFC 5321 §4.5.3.1.5: 512 with CRLF
    else:
        assert len(ins.matricule) == 15


# --- properties -----------------------------------------------------------------------

DIGITS = "0123456789"


@st.composite
def valid_matricules(draw: st.DrawFn) -> str:
    first = draw(st.sampled_from("1278"))
    year_month = draw(st.text(DIGITS, min_size=4, max_size=4))
    department = draw(
        st.one_of(st.text(DIGITS, min_size=2, max_size=2), st.sampled_from(["2A", "2B"]))
    )
    rest = draw(st.text(DIGITS, min_size=6, max_size=6))
    return with_key(first + year_month + department + rest)


@settings(max_examples=400, deadline=None)
@given(valid_matricules())
def test_every_generated_valid_number_passes(matricule: str) -> None:
    ins = parse_ins(matricule)
    assert ins.matricule == matricule
    assert ins.kind is (InsKind.NIR if matricule[0] in "12" else InsKind.NIA)
    assert ins.patient_address() == f"{matricule}@{PATIENT_DOMAIN}"
    assert parse_patient_address(ins.patient_address()) == ins


REPLACEMENTS = DIGITS + "ABabCX -é٣"


@settings(max_examples=500, deadline=None)
@given(valid_matricules(), st.integers(0, 14), st.sampled_from(REPLACEMENTS))
def test_any_single_character_change_fails(matricule: str, index: int, new: str) -> None:
    old = matricule[index]
    if new.upper() == old:  # same character, or A -> a: the same number
        return
    changed = matricule[:index] + new + matricule[index + 1 :]
    with pytest.raises(InsError) as caught:
        parse_ins(changed)
    if index > 0 and matricule.isdigit() and new in DIGITS:
        # In an all-digit number (no Corsican letter whose "2" could be hit), a
        # digit-for-digit change past the kind digit is caught by the key itself.
        assert caught.value.code is InsProblem.KEY


@settings(max_examples=500, deadline=None)
@given(valid_matricules(), st.integers(0, 13))
def test_any_adjacent_swap_of_different_characters_fails(matricule: str, index: int) -> None:
    a, b = matricule[index], matricule[index + 1]
    if a == b:
        return
    swapped = matricule[:index] + b + a + matricule[index + 2 :]
    with pytest.raises(InsError) as caught:
        parse_ins(swapped)
    if index > 0 and matricule.isdigit():
        assert caught.value.code is InsProblem.KEY


# --- patient addresses, test identities, CLI text ----------------------------------


def test_patient_address_round_trip() -> None:
    ins = parse_ins("279035121518989")
    assert ins.patient_address() == "279035121518989@patient.mssante.fr"
    assert ins.patient_address("patient.test") == "279035121518989@patient.test"
    assert parse_patient_address("279035121518989@patient.mssante.fr") == ins


def test_patient_domain_is_case_insensitive() -> None:
    assert parse_patient_address("279035121518989@PATIENT.MSSante.fr") == parse_ins(
        "279035121518989"
    )


@pytest.mark.parametrize(
    "address",
    [
        "279035121518989@mssante.fr",
        "279035121518989@patient.mssante.fr.evil.example",
        "279035121518989",
        "secretariat@cpts.example",
    ],
)
def test_other_domains_are_not_patient_addresses(address: str) -> None:
    assert parse_patient_address(address) is None


def test_custom_patient_domain() -> None:
    assert parse_patient_address("279035121518989@patient.mssante.fr", "patient.test") is None
    assert parse_patient_address("279035121518989@patient.test", "patient.test") is not None


def test_bad_local_part_in_patient_domain_raises() -> None:
    with pytest.raises(InsError) as caught:
        parse_patient_address("279035121518988@patient.mssante.fr")
    assert caught.value.code is InsProblem.KEY
    with pytest.raises(InsError) as caught:
        parse_patient_address("dupont@patient.mssante.fr")
    assert caught.value.code is InsProblem.LENGTH


def test_test_prefixes_mark_test_identities() -> None:
    assert not parse_ins("279035121518989").is_test
    assert parse_ins("279035121518989", test_prefixes={"2790351"}).is_test
    assert not parse_ins("295109912611193", test_prefixes={"2790351"}).is_test
    assert parse_ins("253072a07300443", test_prefixes={"253072a"}).is_test


def test_ins_is_frozen() -> None:
    ins = parse_ins("279035121518989")
    with pytest.raises(AttributeError):
        ins.key = 1  # type: ignore[misc]
    assert isinstance(ins, Ins)


def test_explain() -> None:
    assert explain("279035121518989") == "valid NIR 279035121518989, key 89"
    assert explain(" 2 79 03 51 215 189 89 ") == "valid NIR 279035121518989, key 89"
    nia = with_key("8790351215189")
    assert explain(nia) == f"valid NIA (provisional number) {nia}, key {nia[13:]}"
    assert explain("279035121518989", test_prefixes={"27"}).endswith(", test identity")
    assert explain("279035121518988") == (
        "invalid: INS 279035121518988: the key is 88 but should be 89 (97 - N mod 97)"
    )
