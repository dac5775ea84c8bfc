"""The control protocol and the socket path (pure): round trips, refusals, and any
bytes → a request or a ProtocolError, never anything else."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.config import load_text
from relay.control.model import (
    KickReport,
    ReloadReport,
    SessionFacts,
    WhoReport,
    age,
    kick_from_json,
    reload_from_json,
    render_reload,
    status_from_json,
    to_json,
    who_from_json,
)
from relay.control.paths import control_socket_from_text, control_socket_path
from relay.control.protocol import (
    Command,
    ProtocolError,
    Request,
    Response,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)


@pytest.mark.parametrize(
    "request_",
    [
        Request(Command.STATUS),
        Request(Command.WHO),
        Request(Command.RELOAD),
        Request(Command.KICK, person="dupont"),
        Request(Command.KICK, person="dupont", box="secretariat@cpts-demo.mssante.fr"),
        Request(Command.UPSTREAM_SYNC, box="cpts@coordo.operateur-test.mssante.fr"),
    ],
)
def test_requests_round_trip(request_: Request) -> None:
    line = encode_request(request_)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_request(line.rstrip(b"\n")) == request_


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"status", "not a JSON line"),
        (b"[]", "not a JSON object"),
        (b'{"command": "status"}', "protocol version"),
        (b'{"v": 1, "command": "rm -rf"}', "unknown command"),
        (b'{"v": 1, "command": "kick"}', "kick needs a person"),
        (b'{"v": 1, "command": "status", "person": "x"}', "takes no person"),
        (b'{"v": 1, "command": "upstream-sync"}', "needs a box"),
        (b'{"v": 1, "command": "upstream-sync", "box": "b@x", "person": "x"}', "no person"),
        (b'{"v": 1, "command": "kick", "person": ""}', "non-empty"),
        (b'{"v": 1, "command": "who", "extra": 1}', "unknown fields"),
        (b"\xff\xfe", "not a JSON line"),
        (b'{"v": 1, "command": "who"}' + b" " * 5000, "longer than"),
    ],
)
def test_bad_requests_are_protocol_errors(line: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode_request(line)


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_request(data)
    with contextlib.suppress(ProtocolError):
        decode_response(data)


@given(
    st.dictionaries(
        st.sampled_from(["v", "command", "person", "box", "ok", "result", "error"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=20), st.booleans()),
    )
)
def test_any_json_object_decodes_or_raises_protocol_error(obj: dict[str, object]) -> None:
    line = json.dumps(obj).encode()
    for decode in (decode_request, decode_response):
        with contextlib.suppress(ProtocolError):
            decode(line)


def test_responses_round_trip_and_refusals_say_why() -> None:
    report = ReloadReport(applied=False, config_file="/x", changes=(), problems=("bad",))
    response = Response(ok=False, result=to_json(report), error="reload refused")
    back = decode_response(encode_response(response))
    assert back.ok is False and back.error == "reload refused"
    assert back.result == json.loads(json.dumps(response.result))
    assert reload_from_json(back.result) == report and not reload_from_json(back.result)
    assert "reload refused: /x" in render_reload(report)
    with pytest.raises(ProtocolError, match="must say why"):
        decode_response(b'{"v": 1, "ok": false}')


def test_answers_round_trip_through_json() -> None:
    who = WhoReport(
        (
            SessionFacts(
                "imap",
                "imap:127.0.0.1:993",
                "dupont",
                None,
                "::1",
                "2026-01-01T00:00:00+00:00",
                "TLSv1.3",
            ),
        )
    )
    assert who_from_json(json.loads(json.dumps(to_json(who)))) == who
    kick = KickReport("dupont", "b@x", 1, 2)
    assert kick_from_json(to_json(kick)) == kick
    bad: object
    for bad in (None, [], {"sessions": "x"}, {"sessions": [{"protocol": "imap"}]}):
        with pytest.raises(ProtocolError):
            who_from_json(bad)
    with pytest.raises(ProtocolError):
        status_from_json({"version": "1"})


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (5.9, "5s"),
        (75, "1m 15s"),
        (3 * 3600 + 120, "3h 2m"),
        (2 * 86400 + 7200, "2d 2h"),
    ],
)
def test_age(seconds: float | None, text: str) -> None:
    assert age(seconds) == text


BASE = """
[server]
hostname = "localhost"
{server}

[storage]
key_file = "k"
"""


@pytest.mark.parametrize(
    ("server", "env", "expected"),
    [
        ("", {}, "var/control.sock"),
        ('data_dir = "data"', {}, "data/control.sock"),
        (
            'data_dir = "data"',
            {"RUNTIME_DIRECTORY": "/run/mss-relay"},
            "/run/mss-relay/control.sock",
        ),
        ("", {"RUNTIME_DIRECTORY": "/run/a:/run/b"}, "/run/a/control.sock"),
        ('control_socket = "s/c.sock"', {"RUNTIME_DIRECTORY": "/run/a"}, "s/c.sock"),
        ('control_socket = "/tmp/x.sock"\ndata_dir = "d"', {}, "/tmp/x.sock"),
    ],
)
def test_daemon_and_cli_find_the_same_socket(
    tmp_path: Path, server: str, env: dict[str, str], expected: str
) -> None:
    """The daemon reads the loaded config; the CLI reads [server] alone (the file may
    not load): both give the same path."""
    path = tmp_path / "relay.toml"
    text = BASE.format(server=server)
    daemon_side = control_socket_path(load_text(text, path).server, env)
    cli_side = control_socket_from_text(text, path, env)
    assert daemon_side == cli_side == tmp_path / expected
