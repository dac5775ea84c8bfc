"""`mss-relay check-config --effective`: every setting as `serve` would use it, in the
manner of `doveconf -n` / `postconf -n`.

Relative paths resolved, defaults filled in (a `# default` comment on each value the
file left at its default), derived values shown (the audit key and anchor paths, the
local domains), secrets hidden (password hashes, the database password). The output
is TOML (`tomllib` reads it back), laid out like the config file, but it is a report:
field names are the model's (`relay.config.model`), not always the file's keys.

Pure: formats a loaded `Config`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from relay.config.model import Config
from relay.config.summary import mask_url

__all__ = ["effective"]

_HIDDEN = {"password_hash"}


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return json.dumps(str(value.value), ensure_ascii=False)
    if isinstance(value, Path | str):
        return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string
    if isinstance(value, frozenset | set):
        return "[" + ", ".join(sorted(_scalar(v) for v in value)) + "]"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if dataclasses.is_dataclass(value):
        pairs = (
            f"{f.name} = {_scalar(getattr(value, f.name))}"
            for f in dataclasses.fields(value)
            if getattr(value, f.name) is not None
        )
        return "{ " + ", ".join(pairs) + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _lines(obj: Any, skip: Iterable[str] = (), extra: dict[str, Any] | None = None) -> list[str]:
    """`name = value` for each field of the dataclass `obj` (nested dataclasses that are
    tables of their own are in `skip`); unset values as comments."""
    out: list[str] = []
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if f.name in _HIDDEN:
            out.append(f"# {f.name}: {'set (hidden)' if value else 'not set'}")
            continue
        if value is None:
            out.append(f"# {f.name}: not set")
            continue
        note = "  # default" if value == _default(f) else ""
        out.append(f"{f.name} = {_scalar(value)}{note}")
    for name, value in (extra or {}).items():
        out.append(f"{name} = {_scalar(value)}  # derived")
    return out


def effective(config: Config) -> str:
    """The report, as TOML text."""
    parts: list[str] = [f"# mss-relay effective configuration, from {config.path}"]
    from relay.control.paths import control_socket_path

    # The socket as this environment resolves it (systemd's RUNTIME_DIRECTORY is not
    # set in an admin's shell: the example config names it for that reason).
    socket = control_socket_path(config.server, os.environ)
    parts += ["", "[server]", *_lines(config.server, extra={"control_socket_path": socket})]
    storage = dataclasses.replace(config.storage, url=mask_url(config.storage.url))
    parts += ["", "[storage]"]
    parts += _lines(
        storage,
        extra={
            "audit_key_path": config.storage.audit_key_path,
            "audit_anchor_path": config.storage.audit_anchor_path,
        },
    )
    parts += ["", "[tls]", *_lines(config.tls)]
    for listener in config.listeners:
        parts += ["", "[[listeners]]", *_lines(listener)]
    for person in config.people:
        parts += ["", "[[people]]", *_lines(person)]
    for box in config.mailboxes:
        parts += ["", "[[mailboxes]]", *_lines(box, skip=("coholders", "upstream"))]
        if box.upstream is not None:
            parts += ["", "[mailboxes.upstream]", *_lines(box.upstream)]
        for coholder in box.coholders:
            parts += ["", "[[mailboxes.coholders]]", *_lines(coholder)]
    for route in config.routes:
        parts += ["", "[[routes]]", *_lines(route)]
    parts += ["", "[limits]", *_lines(config.limits)]
    if config.issuer is None:
        parts += ["", "# [issuer]: not set (OAUTHBEARER and XOAUTH2 not offered)"]
    else:
        parts += ["", "[issuer]", *_lines(config.issuer)]
    return "\n".join(parts) + "\n"
