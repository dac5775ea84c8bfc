"""The CLI's side of the control socket (edge): connect, send one request, read
one response line. Blocking: the CLI does nothing else meanwhile."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from relay.control.protocol import (
    MAX_RESPONSE_BYTES,
    ProtocolError,
    Request,
    Response,
    decode_response,
    encode_request,
)

# sun_path is 108 bytes on Linux, the final NUL included.
MAX_SOCKET_PATH_BYTES = 107
# A reload builds TLS contexts and binds listeners; a status reads the store.
DEFAULT_TIMEOUT_SECONDS = 60.0


class ControlUnavailable(Exception):
    """No daemon answers on the socket (not running, wrong path, no permission); the
    message names the socket and says which."""


@contextlib.contextmanager
def socket_address(path: Path) -> Iterator[str]:
    """An address for `path` that fits in sun_path: the path itself, or, when it is
    longer, the same file reached through an open descriptor of its folder
    (/proc/self/fd/N/name, Linux), so a checkout in a deep folder still works."""
    text = os.fspath(path)
    if len(os.fsencode(text)) <= MAX_SOCKET_PATH_BYTES:
        yield text
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def call(path: Path, request: Request, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> Response:
    """Send `request` to the daemon listening on `path`; its response."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    with sock:
        try:
            with socket_address(path) as address:
                sock.connect(address)
        except FileNotFoundError:
            raise ControlUnavailable(
                f"no daemon running: control socket {path} does not exist"
            ) from None
        except ConnectionRefusedError:
            raise ControlUnavailable(
                f"no daemon running: nothing listens on control socket {path}"
            ) from None
        except PermissionError:
            raise ControlUnavailable(
                f"permission denied on control socket {path} (run as the daemon's user)"
            ) from None
        except OSError as exc:
            raise ControlUnavailable(
                f"cannot connect to control socket {path}: {exc.strerror or exc}"
            ) from None
        try:
            sock.sendall(encode_request(request))
            data = bytearray()
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > MAX_RESPONSE_BYTES:
                    raise ProtocolError("response too long")
        except TimeoutError:
            raise ControlUnavailable(
                f"the daemon did not answer within {timeout:.0f} s on {path}"
            ) from None
        except OSError as exc:
            raise ControlUnavailable(
                f"control socket {path}: {exc.strerror or exc} while talking to the daemon"
            ) from None
    if not data:
        raise ControlUnavailable(f"the daemon closed control socket {path} without answering")
    return decode_response(bytes(data))
