"""RelaySMTP builds its aiosmtpd state without aiosmtpd's per-connection introspection
(relay/smtp/session.py `_smtp_init`): the state must be the one aiosmtpd's own
`SMTP.__init__` builds for the same arguments, so that an aiosmtpd upgrade that
changes its constructor fails here instead of misbehaving on the wire."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any, cast

import aiosmtpd.smtp
import pytest
from aiosmtpd.smtp import SMTP

from relay.config.model import ListenerConfig
from relay.runtime import Runtime
from relay.smtp.inbound import InboundHandler
from relay.smtp.session import COMMAND_CALL_LIMITS, RelaySMTP, _sanitized_log_when_enabled
from relay.smtp.submission import SubmissionHandler


def _handler(cls: type[Any]) -> Any:
    # The handlers' properties read the runtime's config (aiosmtpd's introspection
    # evaluates them); nothing else of the runtime is touched by construction.
    runtime = SimpleNamespace(config=SimpleNamespace(limits=SimpleNamespace(max_line_bytes=1000)))
    return cls(cast(Runtime, runtime), cast(ListenerConfig, None))


def _same_method(a: Any, b: Any, pair: tuple[Any, Any] | None = None) -> bool:
    """The same function, bound to the same object (or, for `pair` = (ours, theirs),
    each to its own protocol object)."""
    if getattr(a, "__func__", a) is not getattr(b, "__func__", b):
        return False
    a_self, b_self = getattr(a, "__self__", None), getattr(b, "__self__", None)
    return a_self is b_self or (pair is not None and (a_self, b_self) == pair)


@pytest.mark.parametrize("handler_cls", [SubmissionHandler, InboundHandler])
@pytest.mark.parametrize("starttls", [False, True])
async def test_state_equals_aiosmtpd_init(handler_cls: type[Any], starttls: bool) -> None:
    import ssl

    handler = _handler(handler_cls)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER) if starttls else None
    kwargs: dict[str, Any] = {
        "hostname": "localhost",
        "ident": "mss-relay ESMTP",
        "data_size_limit": 1 << 20,
        "enable_SMTPUTF8": True,
        "tls_context": ctx,
        "require_starttls": starttls,
        "timeout": 300.0,
        "auth_required": handler_cls is SubmissionHandler,
        "auth_require_tls": True,
        "command_call_limit": COMMAND_CALL_LIMITS,
        "loop": asyncio.get_running_loop(),
    }
    fast = RelaySMTP(handler, **kwargs)
    slow = RelaySMTP.__new__(RelaySMTP)
    SMTP.__init__(slow, handler, **kwargs)

    theirs, ours = vars(slow), vars(fast)
    pair = (fast, slow)
    missing = sorted(set(theirs) - set(ours))
    assert not missing, f"aiosmtpd's __init__ sets {missing}, ours does not"
    for name, value in theirs.items():
        mine = ours[name]
        if name == "_auth_methods":
            assert list(mine) == list(value)
            for mech, attr in value.items():
                assert _same_method(mine[mech].method, attr.method, pair), mech
                assert mine[mech].is_builtin == attr.is_builtin, mech
        elif name in ("_handle_hooks", "_smtp_methods"):
            assert sorted(mine) == sorted(value), name
            for key, method in value.items():
                assert _same_method(dict.__getitem__(mine, key), method, pair), (name, key)
        elif name in ("_stream_reader", "_strong_reader", "_stream_reader_wr", "_closed", "_loop"):
            assert type(mine) is type(value), name
        elif name == "_client_connected_cb":
            assert _same_method(mine, value, pair)
        elif name == "command_size_limits":
            continue  # ours are per session on purpose (RelaySMTP.__init__)
        elif callable(value) and not isinstance(value, type):
            assert _same_method(mine, value, pair), name
        else:
            assert mine == value, name


async def test_counted_commands_keep_their_names() -> None:
    """With a probe, dispatch goes through the counting wrapper; HELP still lists the
    same commands."""
    from relay.metrics import Metrics

    handler = _handler(SubmissionHandler)
    probe = Metrics().listener("submission", "127.0.0.1", 1)
    smtp = RelaySMTP(
        handler,
        probe=probe,
        hostname="localhost",
        ident="x",
        data_size_limit=None,
        enable_SMTPUTF8=True,
        tls_context=None,
        require_starttls=False,
        timeout=10.0,
        auth_required=True,
        auth_require_tls=True,
        command_call_limit=COMMAND_CALL_LIMITS,
        loop=asyncio.get_running_loop(),
    )
    wrapped = smtp._smtp_methods.get("NOOP")
    assert wrapped is not None and not _same_method(wrapped, smtp.smtp_NOOP)
    assert smtp._smtp_methods.get("NOSUCH") is None
    assert "EHLO" in dict(smtp._smtp_methods.items())


PATHS = [
    "<a@b.c>",
    "<a@b.c> SIZE=10 BODY=8BITMIME",
    "<a@b.c>\tSIZE=10",
    "<a@b.c>  SIZE=1",
    "<a@b.c> ",
    "<a@b.c> (comment) SIZE=1",
    "<Dr.Martin+ordo@chu-exemple.mssante.fr> SMTPUTF8",
    "<a..b@c>",
    "<.a@b>",
    "<a@b..c>",
    "<a@-b>",
    "<a@[192.0.2.1]>",
    '<"a b"@c>',
    "<@relay.example:a@b.c>",
    "<>",
    "<a@b>x",
    "a@b.c",
    "<" + "x" * 65 + "@b.c>",
]


@pytest.mark.parametrize("local_part_limit", [0, 64])
def test_getaddr_fast_path_answers_as_aiosmtpd(local_part_limit: int) -> None:
    """`RelaySMTP._getaddr` reads plain paths itself and hands the rest to aiosmtpd's:
    for every path, listed and random, its answer is aiosmtpd's."""
    import random

    ours = RelaySMTP.__new__(RelaySMTP)
    ours.local_part_limit = local_part_limit
    rng = random.Random(5321)
    randoms = [
        "".join(rng.choice('ab.@<>" \t-+[]:;()x1=') for _ in range(rng.randint(1, 16)))
        for _ in range(5000)
    ] + [
        "<"
        + "".join(rng.choice("ab.-+") for _ in range(rng.randint(1, 5)))
        + "@"
        + "".join(rng.choice("ab.-") for _ in range(rng.randint(1, 5)))
        + ">"
        + "".join(rng.choice(" \tab=()") for _ in range(rng.randint(0, 6)))
        for _ in range(5000)
    ]

    def answer(getaddr: Any, arg: str) -> object:
        try:
            return getaddr(ours, arg)
        except Exception as exc:  # the email package's parser fails on some input
            return type(exc)

    for arg in PATHS + randoms:
        assert answer(RelaySMTP._getaddr, arg) == answer(SMTP._getaddr, arg), arg


def test_command_lines_are_logged_with_auth_hidden_only_when_the_level_is_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """aiosmtpd's command loop logs each line through its module's `sanitized_log`:
    ours there skips the AUTH-hiding regex when "mail.log" would drop the line, and
    runs aiosmtpd's own (which hides the credentials) when it would write it."""
    assert aiosmtpd.smtp.sanitized_log is _sanitized_log_when_enabled
    logger = logging.getLogger("mail.log")
    # caplog sets (and at the end restores) the level with setLevel, which also empties
    # the logger's cache of isEnabledFor answers: a level left on INFO would log every
    # command of the later tests.
    caplog.set_level(logging.ERROR, logger="mail.log")
    line = b"AUTH PLAIN AGRyLm1hcnRpbgBzZWNyZXQ=\r\n"
    calls: list[bytes] = []
    real_sanitize = aiosmtpd.smtp.sanitize

    def sanitize(text: bytes) -> bytes:
        calls.append(text)
        return real_sanitize(text)

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "mail.log"]

    monkeypatch.setattr(aiosmtpd.smtp, "sanitize", sanitize)
    aiosmtpd.smtp.sanitized_log(logger.info, "%r >> %r", "peer", line)
    assert lines() == [] and calls == []  # dropped, and not sanitized first
    caplog.set_level(logging.INFO, logger="mail.log")
    aiosmtpd.smtp.sanitized_log(logger.info, "%r >> %r", "peer", line)
    aiosmtpd.smtp.sanitized_log(logger.debug, "readline: %r", line)  # DEBUG is off
    assert lines() == ["'peer' >> b'AUTH PLAIN ********\\r\\n'"]
    assert calls == [line]
