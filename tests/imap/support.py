"""Helpers for the IMAP end-to-end tests: put messages in boxes, connect clients."""

from __future__ import annotations

import contextlib
import functools
import imaplib
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Any

from relay.audit.events import MessageAccepted
from relay.message.analysis import analyse
from relay.store.store import Acceptance, Store
from tests.harness import PASSWORDS, RunningDaemon

SHARED_PREFIX = "Partages/"


def letter(n: int, *, subject: str = "Compte rendu", body: str = "Bonjour.") -> bytes:
    return (
        f"From: Dr Martin <martin@cpts-demo.mssante.fr>\r\n"
        f"To: <secretariat@cpts-demo.mssante.fr>\r\n"
        f"Subject: {subject} {n}\r\n"
        f"Date: Mon, 02 Mar 2026 10:00:00 +0100\r\n"
        f"Message-ID: <m{n}@cabinet.example>\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"\r\n"
        f"{body} Message {n}.\r\n"
    ).encode()


def _accepted(queue_id: str, *, message_id: str | None, box: str, size: int) -> MessageAccepted:
    return MessageAccepted(
        protocol="test",
        message_id=message_id,
        sender="martin@cpts-demo.mssante.fr",
        recipients=(box,),
        size_bytes=size,
        queue_id=queue_id,
    )


async def deliver(
    store: Store,
    box: str,
    messages: Sequence[bytes],
    *,
    folder: str = "INBOX",
    flags: str = "",
) -> list[int]:
    """Commit messages to `box`/`folder` through the store; returns their UIDs."""
    uids = []
    for raw in messages:
        meta = analyse(raw)
        event = functools.partial(_accepted, message_id=meta.message_id, box=box, size=len(raw))
        result = await store.accept(
            Acceptance(
                raw=raw,
                meta=meta.to_json(),
                sender="martin@cpts-demo.mssante.fr",
                local_recipients=(box,),
                remote_recipients=(),
                message_id=meta.message_id,
                audit=event,
                folder=folder,
                flags=flags,
            )
        )
        uids.append(result.deliveries[0].uid)
    return uids


def connect_tls(d: RunningDaemon, cert: str | None = None) -> imaplib.IMAP4_SSL:
    return imaplib.IMAP4_SSL(
        "localhost", d.ports["imap-tls"], ssl_context=d.client_context(cert), timeout=10
    )


def connect_starttls(d: RunningDaemon) -> imaplib.IMAP4:
    m = imaplib.IMAP4("localhost", d.ports["imap"], timeout=10)
    m.starttls(ssl_context=d.client_context())
    return m


def login(d: RunningDaemon, person: str, *, as_login: str | None = None) -> imaplib.IMAP4_SSL:
    m = connect_tls(d)
    m.login(as_login or person, PASSWORDS[person])
    return m


def shared(box: str, folder: str = "INBOX") -> str:
    return f'"{SHARED_PREFIX}{box}/{folder}"'


def ok(result: tuple[str, Sequence[Any]]) -> list[bytes]:
    """The data lines of an imaplib OK answer (literals joined to their line)."""
    typ, data = result
    assert typ == "OK", (typ, data)
    return [x[0] + x[1] if isinstance(x, tuple) else x for x in data if x is not None]


def answer(result: tuple[str, Sequence[Any]]) -> tuple[str, bytes]:
    """An imaplib answer as (status, first text line)."""
    typ, data = result
    first = data[0] if data else b""
    return typ, first if isinstance(first, bytes) else b""


class Raw:
    """A line-level IMAP client over TLS for what imaplib cannot do (IDLE, bad input).

    Every read is bounded by a deadline: a missing response fails the test, it never
    hangs it.
    """

    def __init__(self, d: RunningDaemon, *, implicit: bool = True) -> None:
        port = d.ports["imap-tls" if implicit else "imap"]
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            ("127.0.0.1", port), timeout=10
        )
        self.ctx = d.client_context()
        if implicit:
            self.sock = self.ctx.wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""
        self.greeting = self.line()

    def starttls(self) -> None:
        self.send(b"S STARTTLS")
        assert self.until(b"S ").startswith(b"S OK")
        self.sock = self.ctx.wrap_socket(self.sock, server_hostname="localhost")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data + b"\r\n")

    def line(self, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no line from the server")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def until(self, prefix: bytes, timeout: float = 10.0) -> bytes:
        """Read lines until one starts with `prefix`; return it (others in `seen`)."""
        self.seen: list[bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.line(max(deadline - time.monotonic(), 0.01))
            if line.startswith(prefix):
                return line
            self.seen.append(line)

    def command(self, tag: str, text: str) -> tuple[list[bytes], bytes]:
        self.send(f"{tag} {text}".encode())
        final = self.until(tag.encode() + b" ")
        return self.seen, final

    def login(self, person: str, login: str | None = None) -> None:
        _, final = self.command("L", f'LOGIN {login or person} "{PASSWORDS[person]}"')
        assert final.startswith(b"L OK"), final

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
