"""Where the control socket is (pure: the environment is passed in).

Order: ``[server] control_socket`` when set; else ``$RUNTIME_DIRECTORY/control.sock``
when systemd gives a runtime directory (``RuntimeDirectory=`` in the unit; several
are separated by ":", the first is used); else ``<data_dir>/control.sock``, so the
demo works from a fresh clone. The CLI finds the same path from the same file and
environment.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from relay.config.model import ServerConfig

SOCKET_NAME = "control.sock"
DEFAULT_DATA_DIR = "var"  # as the loader's default (relative to the config file)


def control_socket_path(server: ServerConfig, env: Mapping[str, str]) -> Path:
    """The socket the daemon listens on for this `[server]` section."""
    if server.control_socket is not None:
        return server.control_socket
    return _default(server.data_dir, env)


def _default(data_dir: Path, env: Mapping[str, str]) -> Path:
    runtime_dir = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime_dir:
        return Path(runtime_dir) / SOCKET_NAME
    return data_dir / SOCKET_NAME


def _resolve(base: Path, text: str) -> Path:
    # As relay.config.loader resolves paths: against the file's folder, ~ expanded.
    return Path(os.path.abspath(base / Path(text).expanduser()))


def control_socket_from_text(text: str, config_path: Path, env: Mapping[str, str]) -> Path:
    """The socket path read from the `[server]` table alone, for a file that does not
    load as a whole (the point of `reload` is to learn why). Raises
    `tomllib.TOMLDecodeError` when the file is not TOML at all."""
    data = tomllib.loads(text)
    server = data.get("server")
    server = server if isinstance(server, dict) else {}
    base = Path(os.path.abspath(config_path)).parent
    explicit = server.get("control_socket")
    if isinstance(explicit, str) and explicit:
        return _resolve(base, explicit)
    data_dir = server.get("data_dir")
    return _default(
        _resolve(base, data_dir if isinstance(data_dir, str) and data_dir else DEFAULT_DATA_DIR),
        env,
    )
