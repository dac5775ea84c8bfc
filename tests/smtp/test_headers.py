"""HeaderBlock (pure): the header block rewritten in the received buffer."""

from __future__ import annotations

import pytest

from relay.smtp.headers import HeaderBlock

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
