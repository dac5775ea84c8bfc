"""SMTP replies are printable ASCII (RFC 5321 §4.2); "MSSanté" and "§" were sent.

Three layers: every reply template in the source (any string literal that starts
like a reply, f-strings included) is ASCII; the net in `RelaySMTP.push` turns what a
reply echoes into ASCII; over the wire, a reply echoing a UTF-8 address is ASCII."""

from __future__ import annotations

import ast
import asyncio
import re
import smtplib
from pathlib import Path

import pytest

from relay.smtp import replies
from tests.harness import PASSWORDS, RunningDaemon

RELAY = Path(__file__).resolve().parents[2] / "relay"
REPLY = re.compile(r"^[245]\d\d[ -]")


def reply_literals() -> list[tuple[str, int, str]]:
    """(file, line, text) of each string literal in relay/ that reads as an SMTP reply:
    a constant, or the literal parts of an f-string whose first part is one."""
    found: list[tuple[str, int, str]] = []
    for path in sorted(RELAY.rglob("*.py")):
        if "imap" in path.parts:
            continue  # IMAP responses are another grammar (UTF-8 allowed, RFC 9051)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        inner: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                parts = [v.value for v in node.values if isinstance(v, ast.Constant)]
                inner.update(id(v) for v in node.values)
                text = "".join(str(p) for p in parts)
                if node.values and isinstance(node.values[0], ast.Constant) and REPLY.match(text):
                    found.append((path.name, node.lineno, text))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in inner
                and REPLY.match(node.value)
            ):
                found.append((path.name, node.lineno, node.value))
    return found


def test_the_scan_finds_the_templates() -> None:
    texts = [t for _, _, t in reply_literals()]
    assert len(texts) > 40  # a scan that finds nothing proves nothing
    assert replies.BARE_LINE_ENDING in texts
    assert any(t.startswith("550 5.7.1 One patient per message") for t in texts)


@pytest.mark.parametrize(("where", "line", "text"), reply_literals(), ids=lambda v: str(v)[:40])
def test_every_reply_template_is_ascii(where: str, line: int, text: str) -> None:
    assert text.isascii(), f"{where}:{line}: {text!r}"


def test_reworded_and_defaults_are_ascii() -> None:
    for text in [*replies.REWORDED, *replies.REWORDED.values(), *replies.DEFAULT_ENHANCED]:
        assert text.isascii(), text


@pytest.mark.parametrize(
    ("reply", "sent"),
    [
        (
            "550 5.7.1 Sender domain not in the MSSanté trust space",
            "550 5.7.1 Sender domain not in the MSSante trust space",
        ),
        (
            "500 5.5.2 Line too long (RFC 5321 §4.5.3.1.6)",
            "500 5.5.2 Line too long (RFC 5321 ?4.5.3.1.6)",
        ),
        ("550 5.1.1 dossier-é@x.fr: no such mailbox", "550 5.1.1 dossier-e@x.fr: no such mailbox"),
        ("550 5.7.1 O=Hôpital\r\n250 ok", "550 5.7.1 O=Hopital??250 ok"),
        ("550 5.1.1 用户@x.fr", "550 5.1.1 ??@x.fr"),
        ("250 2.0.0 Ok", "250 2.0.0 Ok"),
    ],
)
def test_ascii_reply(reply: str, sent: str) -> None:
    assert replies.ascii_reply(reply) == sent


async def test_echoed_utf8_address_is_sent_in_ascii(daemon: RunningDaemon) -> None:
    def run() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=30) as s:
            s.starttls(context=daemon.client_context())
            s.ehlo("cabinet.example")
            s.login("martin", PASSWORDS["martin"])
            s.mail("martin@cpts-demo.mssante.fr", ["SMTPUTF8"])
            s.command_encoding = "utf-8"
            return s.rcpt("dossier-é@cpts-demo.mssante.fr")

    code, text = await asyncio.to_thread(run)
    assert (code, text) == (550, b"5.1.1 dossier-e@cpts-demo.mssante.fr: no such mailbox here")
