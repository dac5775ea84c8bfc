"""The control protocol (pure): one JSON object per line, UTF-8, each way.

A client sends a request line and reads one response line per request::

    {"v": 1, "command": "kick", "person": "dupont", "box": null}
    {"v": 1, "ok": true, "result": {...}}
    {"v": 1, "ok": false, "error": "unknown person \\"x\\"", "result": null}

`ok` false with a `result` is a command that ran and was refused (a reload of a bad
file: the result lists the problems); without one, the request itself was wrong.
Anything that is not such a line is a `ProtocolError`, never anything else.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 1
# A request is a few dozen bytes; an answer lists sessions (a few hundred bytes each).
MAX_REQUEST_BYTES = 4096
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


class ProtocolError(Exception):
    """A line that is not a valid request or response; the message says why."""


class Command(enum.StrEnum):
    STATUS = "status"
    WHO = "who"
    KICK = "kick"
    RELOAD = "reload"
    UPSTREAM_SYNC = "upstream-sync"  # compare a hosted box with its operator now


@dataclass(frozen=True, slots=True)
class Request:
    command: Command
    person: str | None = None  # kick
    box: str | None = None  # kick --box; upstream-sync BOX


@dataclass(frozen=True, slots=True)
class Response:
    ok: bool
    result: dict[str, Any] | None = None
    error: str | None = None


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _object(line: bytes, limit: int) -> dict[str, Any]:
    if len(line) > limit:
        raise ProtocolError(f"line longer than {limit} bytes")
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("not a JSON line") from None
    if not isinstance(obj, dict):
        raise ProtocolError("not a JSON object")
    if obj.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {obj.get('v')!r}, expected {PROTOCOL_VERSION}")
    return obj


def _optional_text(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 320:
        raise ProtocolError(f"{name} must be a non-empty string")
    return value


def encode_request(request: Request) -> bytes:
    obj: dict[str, Any] = {"v": PROTOCOL_VERSION, "command": request.command.value}
    if request.person is not None:
        obj["person"] = request.person
    if request.box is not None:
        obj["box"] = request.box
    return _line(obj)


def decode_request(line: bytes) -> Request:
    obj = _object(line, MAX_REQUEST_BYTES)
    name = obj.get("command")
    try:
        command = Command(str(name))
    except ValueError:
        raise ProtocolError(f"unknown command {str(name)[:40]!r}") from None
    unknown = set(obj) - {"v", "command", "person", "box"}
    if unknown:
        raise ProtocolError(f"unknown fields: {', '.join(sorted(unknown))[:80]}")
    person, box = _optional_text(obj, "person"), _optional_text(obj, "box")
    if command is Command.KICK and person is None:
        raise ProtocolError("kick needs a person")
    if command is Command.UPSTREAM_SYNC:
        if box is None or person is not None:
            raise ProtocolError("upstream-sync needs a box and no person")
    elif command is not Command.KICK and (person is not None or box is not None):
        raise ProtocolError(f"{command.value} takes no person or box")
    return Request(command, person, box)


def encode_response(response: Response) -> bytes:
    return _line(
        {
            "v": PROTOCOL_VERSION,
            "ok": response.ok,
            "result": response.result,
            "error": response.error,
        }
    )


def decode_response(line: bytes) -> Response:
    obj = _object(line, MAX_RESPONSE_BYTES)
    ok, result, error = obj.get("ok"), obj.get("result"), obj.get("error")
    if not isinstance(ok, bool):
        raise ProtocolError("response without ok")
    if result is not None and not isinstance(result, dict):
        raise ProtocolError("result must be an object")
    if error is not None and not isinstance(error, str):
        raise ProtocolError("error must be a string")
    if not ok and error is None:
        raise ProtocolError("a refusal must say why")
    return Response(ok, result, error)
