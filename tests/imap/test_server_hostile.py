"""Hostile input: malformed commands, repeated errors, oversized lines and literals."""

from __future__ import annotations

import asyncio

import pytest

from relay.store.mailstore import MailStore
from tests.harness import RunningDaemon
from tests.imap.support import Raw


async def test_malformed_commands_get_bad_then_bye(daemon: RunningDaemon) -> None:
    def run() -> None:
        raw = Raw(daemon)
        _, final = raw.command("a", "FETCH")
        assert final.startswith(b"a BAD")  # not valid before login
        _, final = raw.command("b", "NOSUCHCOMMAND x")
        assert final == b"b BAD Unknown command"
        _, final = raw.command("c", "LOGIN")
        assert final.startswith(b"c BAD")
        raw.login("martin")  # a good command resets the count
        for i in range(9):
            _, final = raw.command(f"x{i}", "SELECT (")
            assert final.startswith(f"x{i} BAD".encode())
        raw.send(b"y SELECT (")
        assert raw.until(b"* BYE", 5.0) == b"* BYE Too many invalid commands"
        raw.close()

    await asyncio.to_thread(run)


async def test_oversized_literal_is_refused_toobig(daemon: RunningDaemon) -> None:
    def run() -> None:
        raw = Raw(daemon)
        raw.login("martin")
        too_big = daemon.runtime.config.limits.imap_max_literal_bytes + 1
        raw.send(f"a APPEND INBOX {{{too_big}}}".encode())
        assert raw.until(b"a ").startswith(b"a NO [TOOBIG]")
        # with LITERAL+ the client sends at once: the bytes are skipped, not run
        raw.send(b"b APPEND INBOX {20+}")
        raw.send(b"c LOGOUT\r\n0123456789")
        _, final = raw.command("d", "NOOP")
        assert final.startswith(b"d OK")
        raw.close()

    await asyncio.to_thread(run)


async def test_overlong_line_gets_bad_without_echo(daemon: RunningDaemon) -> None:
    def run() -> None:
        raw = Raw(daemon)
        raw.login("martin")
        limit = daemon.runtime.config.limits.imap_max_line_bytes
        raw.send(b"a SELECT " + b"X" * (limit + 10))
        line = raw.until(b"a ")
        assert line == b"a BAD Line too long"
        _, final = raw.command("b", "NOOP")
        assert final.startswith(b"b OK")
        raw.close()

    await asyncio.to_thread(run)


async def test_internal_errors_give_serverbug_with_a_reference(
    daemon: RunningDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing store (fault injected) never shows its exception text to the client."""

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret detail: /var/lib/relay.db is locked")

    monkeypatch.setattr(MailStore, "index_read", broken)

    def status() -> bytes:
        raw = Raw(daemon)
        raw.login("martin")
        _, final = raw.command("s", "STATUS INBOX (MESSAGES)")
        _, after = raw.command("n", "NOOP")
        assert after.startswith(b"n OK")  # the session goes on
        raw.close()
        return final

    final = await asyncio.to_thread(status)
    assert final.startswith(b"s NO [SERVERBUG] Internal error, reference ")
    assert b"secret" not in final
