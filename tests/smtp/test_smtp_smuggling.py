"""SMTP smuggling (CVE-2023-51764 family): a non-standard end-of-data sequence such as
<LF>.<CR><LF> must neither end the data nor let the commands after it run. Only
<CR><LF>.<CR><LF> ends DATA here, and a message holding a bare CR or LF is refused
whole (RFC 5321 §2.3.8)."""

from __future__ import annotations

import asyncio
import smtplib

import pytest

from relay.store.store import AuditFilter
from tests.harness import MARTIN_BOX, PASSWORDS, SHARED, RunningDaemon

SMUGGLED = (
    f"MAIL FROM:<{MARTIN_BOX}>\r\nRCPT TO:<{SHARED}>\r\nDATA\r\nFrom: evil\r\n\r\nsmuggled\r\n"
).encode()


@pytest.mark.parametrize(
    "fake_end",
    [b"\n.\r\n", b"\r\n.\n", b"\n.\n", b"\r.\r\n", b"\r\n.\r"],
    ids=["LF.CRLF", "CRLF.LF", "LF.LF", "CR.CRLF", "CRLF.CR"],
)
async def test_smuggled_commands_never_run(daemon: RunningDaemon, fake_end: bytes) -> None:
    def run() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=10) as s:
            s.starttls(context=daemon.client_context())
            s.login("martin", PASSWORDS["martin"])
            s.mail(MARTIN_BOX)
            s.rcpt(SHARED)
            code, _ = s.docmd("DATA")
            assert code == 354
            s.send(
                b"From: <"
                + MARTIN_BOX.encode()
                + b">\r\n\r\nfirst"
                + fake_end
                + SMUGGLED
                + b".\r\n"
            )
            reply = s.getreply()
            return reply, s.noop()

    reply, after = await asyncio.to_thread(run)
    assert reply == (
        550,
        b"5.6.0 Message refused: bare LF or CR in the data (RFC 5321 section 2.3.8); "
        b"nothing stored",
    )
    assert after[0] == 250  # in step: no reply of a smuggled command is pending
    assert await daemon.store.messages(SHARED) == []
    [event] = await daemon.store.audit_rows(AuditFilter(action="message.refused"))
    assert "bare LF or CR" in event.data
