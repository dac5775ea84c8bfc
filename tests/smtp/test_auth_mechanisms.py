"""AUTH as advertised and as answered (issue 9, item 8): aiosmtpd took the handler's
`auth_password`/`auth_external`/`auth_token` methods for SASL mechanisms named
"password", "external" and "token", advertised them, and `AUTH password` ended in a
traceback and a 451."""

from __future__ import annotations

import asyncio
import base64
import smtplib

import pytest

from tests.harness import PASSWORDS, RunningDaemon


def session(d: RunningDaemon, *commands: str) -> tuple[str, list[tuple[int, bytes]]]:
    """STARTTLS on submission, then `commands`; the EHLO AUTH line and the replies."""
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=30) as s:
        s.starttls(context=d.client_context())
        s.ehlo("cabinet.example")
        return s.esmtp_features["auth"], [s.docmd(c) for c in commands]


async def test_ehlo_advertises_only_real_mechanisms(daemon: RunningDaemon) -> None:
    auth, _ = await asyncio.to_thread(session, daemon)
    assert auth.split() == ["EXTERNAL", "LOGIN", "PLAIN"]


@pytest.mark.parametrize("mechanism", ["password", "token", "external-password", "CRAM-MD5", "x"])
async def test_unknown_mechanism_is_504(daemon: RunningDaemon, mechanism: str) -> None:
    _, [reply] = await asyncio.to_thread(session, daemon, f"AUTH {mechanism}")
    assert reply == (504, b"5.5.4 Unrecognized authentication type")


async def test_mechanism_names_are_case_insensitive(daemon: RunningDaemon) -> None:
    blob = base64.b64encode(f"\0martin\0{PASSWORDS['martin']}".encode()).decode()
    _, [external, plain] = await asyncio.to_thread(
        session, daemon, "AUTH external =", f"AUTH plain {blob}"
    )
    assert external == (535, b"5.7.8 EXTERNAL needs a client certificate")
    assert plain[0] == 235
