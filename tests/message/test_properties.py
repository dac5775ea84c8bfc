"""Property tests: any bytes are analysed and served without an exception, JSON round
trips, and generated MIME trees agree with Python's email package part by part."""

from __future__ import annotations

import email
import email.policy
import json
from email import encoders
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.message.analysis import BodyPart, MessageMeta, analyse, split_multipart
from relay.message.imapview import (
    SECTION_KINDS,
    binary_section,
    bodystructure,
    envelope,
    find_part,
    search_header,
    search_text,
    section,
)
from tests.message.test_analysis import email_leaves, leaves

# Fragments that make random input look like MIME often enough to reach deep code.
FRAGMENTS = [
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b"--b",
    b"--b--",
    b"--c",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b'Content-Type: multipart/alternative; boundary="c"\r\n',
    b"Content-Type: multipart/digest; boundary=b\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: text/plain; charset=\"iso-8859-1\"; (comment) name*=utf-8''a%20b\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b'Content-Disposition: attachment; filename="a\\"b"\r\n',
    b"Content-Language: fr, en\r\n",
    b'From: "A, B" <a@b>, G: c@d;, (x) e@f\r\n',
    b"To: undisclosed-recipients:;\r\n",
    b"Subject: =?utf-8?q?caf=C3=A9?= =?utf-8?b?w6k=?=\r\n",
    b"Date: Sun, 22 Nov 2026 05:31:06 +0000\r\n",
    b" folded\r\n",
    b'caf\xc3\xa9 \xe9 \x00 ( " < > ; : @ = ? ',
]

mime_bytes = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=20)), max_size=40
).map(b"".join)
any_bytes = st.one_of(st.binary(max_size=2000), mime_bytes)


def all_paths(meta: MessageMeta) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = []

    def walk(node: BodyPart, prefix: tuple[int, ...], at_message: bool) -> None:
        if node.parts:
            for i, child in enumerate(node.parts, 1):
                out.append((*prefix, i))
                walk_inside(child, (*prefix, i))
        elif at_message:
            out.append((*prefix, 1))
            walk_inside(node, (*prefix, 1))

    def walk_inside(node: BodyPart, path: tuple[int, ...]) -> None:
        if node.parts:
            walk(node, path, False)
        elif node.message is not None:
            walk(node.message, path, True)

    walk(meta.body, (), True)
    return out


def check_offsets(node: BodyPart, size: int) -> None:
    assert 0 <= node.header_start <= node.body_start <= node.end <= size
    for child in node.parts:
        assert node.body_start <= child.header_start
        assert child.end <= node.end
        check_offsets(child, size)
    if node.message is not None:
        assert node.message.header_start == node.body_start
        check_offsets(node.message, size)


@settings(max_examples=400, deadline=None)
@given(any_bytes)
def test_any_bytes_are_analysed_and_served(raw: bytes) -> None:
    meta = analyse(raw)
    assert meta.size == len(raw)
    check_offsets(meta.body, len(raw))
    envelope(meta)
    bodystructure(meta, True)
    bodystructure(meta, False)
    for path in [(), *all_paths(meta)]:
        assert find_part(meta, path) is not None
        for kind in SECTION_KINDS:
            section(raw, meta, path, kind, ("subject", "from"))
        binary_section(raw, meta, path)
    search_text(raw, meta, "café", "TEXT")
    search_header(raw, meta, "subject", "x")


@settings(max_examples=300, deadline=None)
@given(any_bytes)
def test_a_bytearray_is_analysed_as_its_bytes(raw: bytes) -> None:
    """The SMTP path analyses the received buffer itself, not a copy of it (a 25 MB
    message would otherwise be held twice): the same metadata as for bytes."""
    assert analyse(bytearray(raw)).to_json() == analyse(raw).to_json()


@given(any_bytes)
def test_json_round_trip(raw: bytes) -> None:
    meta = analyse(raw)
    text = json.dumps(meta.to_json())
    assert MessageMeta.from_json(json.loads(text)) == meta


texts = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")) | st.sampled_from("\n é€"),
    max_size=60,
)


@st.composite
def mime_trees(draw: st.DrawFn, depth: int = 0) -> Message:
    kind = draw(
        st.sampled_from(["text", "binary", "multipart", "message"] if depth < 3 else ["text"])
    )
    if kind == "text":
        charset = draw(st.sampled_from(["utf-8", "iso-8859-1"]))
        body = draw(texts)
        if charset == "iso-8859-1":
            body = body.encode("latin-1", "replace").decode("latin-1")
        return MIMEText(body, draw(st.sampled_from(["plain", "html"])), charset)
    if kind == "binary":
        part = MIMEBase("application", draw(st.sampled_from(["pdf", "zip"])))
        part.set_payload(draw(st.binary(max_size=200)))
        encoders.encode_base64(part)
        part.add_header("Content-Disposition", "attachment", filename="IHE_XDM.ZIP")
        return part
    if kind == "message":
        inner = draw(mime_trees(depth + 1))
        inner["Subject"] = "inner"
        return MIMEMessage(inner)
    multi = MIMEMultipart(draw(st.sampled_from(["mixed", "alternative", "related"])))
    for child in draw(st.lists(mime_trees(depth + 1), min_size=1, max_size=3)):
        multi.attach(child)
    return multi


@settings(max_examples=150, deadline=None)
@given(mime_trees(), st.booleans())
def test_generated_mime_agrees_with_python_email(tree: Message, bare_lf: bool) -> None:
    tree["From"] = "a@x.example"
    raw = tree.as_bytes(policy=email.policy.SMTP)
    if bare_lf:
        raw = raw.replace(b"\r\n", b"\n")
    meta = analyse(raw)
    theirs = email_leaves(email.message_from_bytes(raw, policy=email.policy.compat32))
    ours = leaves(meta)
    assert sorted(ours) == sorted(theirs)
    for path, other in theirs.items():
        part = ours[path]
        assert f"{part.type}/{part.subtype}" == other.get_content_type()
        if part.message is not None:
            continue
        payload = other.get_payload()
        assert isinstance(payload, str)
        assert section(raw, meta, path) == payload.encode("ascii", "surrogateescape")
        assert binary_section(raw, meta, path) == other.get_payload(decode=True)


def reference_split(body: bytes, boundary: bytes) -> list[tuple[int, int]]:
    """RFC 2046 §5.1.1 delimiter lines found line by line (slow, obviously right)."""
    delim = b"--" + boundary
    spans: list[tuple[int, int]] = []
    current = -1
    starts = [0] + [i + 1 for i, c in enumerate(body) if c == 0x0A]
    for p in starts:
        if not body.startswith(delim, p):
            continue
        rest = body[p + len(delim) :]
        line, nl, _ = rest.partition(b"\n")
        line = line.removesuffix(b"\r") if nl else line
        close = line.startswith(b"--")
        if (line[2:] if close else line).strip(b" \t"):
            continue
        if not nl and rest.endswith(b"\r"):
            continue
        if current >= 0:
            stop = p - 2 if body[p - 2 : p] == b"\r\n" else p - 1
            spans.append((current, max(current, stop)))
        if close:
            return spans
        current = min(len(body), p + len(delim) + len(rest.partition(b"\n")[0]) + len(nl))
    if current >= 0:
        spans.append((current, len(body)))
    return spans


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [b"--b", b"--bx", b"--b--", b"\r\n", b"\n", b" ", b"\t", b"x", b"\r", b"-"]
        ),
        max_size=300,
    ).map(b"".join)
)
def test_split_multipart_matches_reference(body: bytes) -> None:
    # Many look-alike lines make split_multipart switch to its regex path mid-way.
    assert split_multipart(body, 0, len(body), b"b") == reference_split(body, b"b")


def test_split_multipart_regex_path_edges() -> None:
    lookalikes = b"--bx\r\n" * 20
    for body in (
        lookalikes + b"--b\r\none\r\n--b",  # last delimiter at the very end
        lookalikes + b"--b\r\none\r\n--b--",
        lookalikes + b"--b\r\none\r\n--b-- \t\r\nepilogue",
        lookalikes + b"--b\r\none\r\n--b--x\r\n--b\r",
    ):
        assert split_multipart(body, 0, len(body), b"b") == reference_split(body, b"b")
        assert len(split_multipart(body, 0, len(body), b"b")) >= 1


@given(mime_trees(), st.booleans())
def test_a_bytearray_mime_tree_is_analysed_as_its_bytes(tree: Message, bare_lf: bool) -> None:
    raw = tree.as_bytes()
    if bare_lf:
        raw = raw.replace(b"\r\n", b"\n")
    assert analyse(bytearray(raw)).to_json() == analyse(raw).to_json()
