"""HeaderBlock (pure): the header block rewritten in the received buffer; the addresses
of a field, the same as the standard library's parser finds."""

from __future__ import annotations

import email.utils
import random

import pytest

from relay.smtp.headers import _PLAIN_ADDRESS, HeaderBlock, addr_specs

MESSAGES = [
    b"From: a@x\r\nSubject: s\r\n\r\nbody\r\n.. line\r\n",
    b"From: a@x\r\nSubject: folded\r\n  on two lines\r\n\r\n\r\nbody",
    b"\r\nno header at all\r\n",
    b"From: a@x\r\n",  # no blank line, no body
    b"From: a@x",  # nor a final CRLF
    b"",
    b"From: a@x\r\n\r\n",
]


@pytest.mark.parametrize("message", MESSAGES)
def test_render_into_gives_render_and_body_in_the_same_buffer(message: bytes) -> None:
    expected = HeaderBlock.parse(message)
    expected.replace("From", "b@y")
    expected.add("Date", "Wed, 2 Dec 2026 16:00:00 +0000")
    want = expected.render() + bytes(expected.body)

    received = bytearray(message)
    headers = HeaderBlock.parse(received)
    headers.replace("From", "b@y")
    headers.add("Date", "Wed, 2 Dec 2026 16:00:00 +0000")
    out = headers.render_into(received)
    assert out is received and out == want
    assert headers.body == b""
    received.clear()  # no view left on it


# --- addresses: the plain forms read by one match, the same answer as the stdlib ---

_SPECIALS = " .<>@\",;:()[]\\\t=?-'_"


def _stdlib(values: list[str]) -> list[str]:
    return [addr.lower() for _, addr in email.utils.getaddresses(values) if addr]


def _address_like(rng: random.Random) -> str:
    def word() -> str:
        return "".join(rng.choices("abcXYZ019-_+'", k=rng.randint(1, 5)))

    local = ".".join(word() for _ in range(rng.randint(1, 3)))
    domain = ".".join(word() for _ in range(rng.randint(1, 3)))
    addr = f"{local}@{domain}"
    form = rng.choice(["{a}", "<{a}>", "{n} <{a}>", "{n}<{a}>"])
    text = form.format(a=addr, n=" ".join(word() for _ in range(rng.randint(1, 3))))
    for _ in range(rng.choice([0, 0, 1, 2])):  # then, often, break it somewhere
        at = rng.randint(0, len(text))
        text = text[:at] + rng.choice(_SPECIALS) + text[at:]
    return text


@pytest.mark.parametrize(
    "value",
    [
        "<dr.martin@cpts.example>",
        "dr.martin@cpts.example",
        "Dr Martin <dr.martin@cpts.example>",
        "Dr. Martin <Dr.Martin@CPTS.example>",
        '"Martin, Dr" <dr.martin@cpts.example>',
        "=?utf-8?q?Dr_M=C3=A9lanie?= <m@cpts.example>",
        "a@x, b@y",
        "undisclosed-recipients:;",
        "(secretariat) accueil@cpts.example",
        "<@relay.example:a@x>",
        "a..b@x",
        "a@x.",
        "<a@x",
        "",
    ],
)
def test_an_address_field_gives_what_the_stdlib_parser_gives(value: str) -> None:
    assert addr_specs([value]) == _stdlib([value])
    headers = HeaderBlock.parse(f"From: {value}\r\nSender: {value}\r\n\r\n".encode())
    assert headers.addresses("From") == _stdlib(headers.values("From"))


def test_plain_and_broken_addresses_by_the_thousand_give_the_stdlib_answer() -> None:
    rng = random.Random(20261203)
    plain = 0
    for _ in range(20_000):
        values = [_address_like(rng) for _ in range(rng.choice([1, 1, 1, 2]))]
        got = addr_specs(values)
        assert got == _stdlib(values), values
        plain += all(_PLAIN_ADDRESS.match(v) for v in values)
    assert 1_000 < plain < 19_000  # both paths were taken, many times


def test_the_field_names_follow_add_and_replace() -> None:
    headers = HeaderBlock.parse(b"From: a@x\r\nSender: s@x\r\n\r\nbody")
    assert headers.values("Sender") == ["s@x"]
    headers.replace("Sender", "t@x")
    headers.add("Reply-To", "r@x")
    assert headers.values("Sender") == ["t@x"]
    assert headers.addresses("Reply-To") == ["r@x"]
    assert headers.values("From") == ["a@x"]
