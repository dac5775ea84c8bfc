"""`mss-relay install [--prefix /] [--destdir DIR]`: lay out the command, the config,
the policies, the state folder and the systemd files, from the installed package.

Why a subcommand and not `make install`: the files come from the wheel's package data
(`relay/share/`: the policies, the example config, the unit, sysusers.d and tmpfiles.d
files), so `pip install mss-relay && mss-relay install` works without a checkout, and
the launcher it writes knows which Python has the package (this one). `make install
DESTDIR=...` in the repository calls it.

Layout (prefix `/`, the packager's; `/usr/local` puts the command in /usr/local/bin and
the systemd files under /etc, the local administrator's places):

  /usr/bin/mss-relay                      launcher: exec <this python> -m relay.cli
  /etc/mss-relay/relay.toml               the example, if no relay.toml is there yet
  /etc/mss-relay/relay.example.toml       the example, always (to compare after upgrades)
  /etc/mss-relay/policies/*.toml          the policy files (server.policy_dir)
  /etc/mss-relay/tls/                     for the certificate, key, IGC-Santé CAs
  /var/lib/mss-relay/{keys,crl}/          state (StateDirectory=), 0700
  /usr/lib/systemd/system/mss-relay.service
  /usr/lib/sysusers.d/mss-relay.conf      the mss-relay user
  /usr/lib/tmpfiles.d/mss-relay.conf      the folders, modes, owners
  /usr/share/doc/mss-relay/README.md      the unit's Documentation=

These paths are the ones the unit (ExecStart=, StateDirectory=, ConfigurationDirectory=)
and the example config (policy_dir, key_file, crl_files) name. Owners are not set here
(the user may not exist yet, and a DESTDIR build runs unprivileged): systemd-sysusers
and systemd-tmpfiles set them, as the printed next steps say.

Exit status: 0 installed, 2 refused (bad prefix, a file in the way, no permission).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = ["Layout", "layout", "register"]

EXIT_OK = 0
EXIT_BAD_INPUT = 2

UNIT_BIN = "/usr/bin/mss-relay"  # what systemd/mss-relay.service names


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each part goes, as absolute paths on the target system (no DESTDIR)."""

    bindir: PurePosixPath
    confdir: PurePosixPath
    statedir: PurePosixPath
    unitdir: PurePosixPath
    sysusersdir: PurePosixPath
    tmpfilesdir: PurePosixPath
    docdir: PurePosixPath


def layout(prefix: str) -> Layout:
    """The layout for `prefix` ("/" or "/usr/local"); ValueError for any other."""
    etc, var = PurePosixPath("/etc"), PurePosixPath("/var/lib")
    if prefix in ("/", "/usr"):
        lib = PurePosixPath("/usr/lib")
        return Layout(
            bindir=PurePosixPath("/usr/bin"),
            confdir=etc / "mss-relay",
            statedir=var / "mss-relay",
            unitdir=lib / "systemd/system",
            sysusersdir=lib / "sysusers.d",
            tmpfilesdir=lib / "tmpfiles.d",
            docdir=PurePosixPath("/usr/share/doc/mss-relay"),
        )
    if prefix.rstrip("/") == "/usr/local":
        return Layout(
            bindir=PurePosixPath("/usr/local/bin"),
            confdir=etc / "mss-relay",
            statedir=var / "mss-relay",
            unitdir=etc / "systemd/system",
            sysusersdir=etc / "sysusers.d",
            tmpfilesdir=etc / "tmpfiles.d",
            docdir=PurePosixPath("/usr/local/share/doc/mss-relay"),
        )
    # /etc/mss-relay and /var/lib/mss-relay are fixed by the unit's
    # ConfigurationDirectory= and StateDirectory=: another prefix would split them off.
    raise ValueError(f"--prefix must be / or /usr/local, got {prefix!r}")


def launcher(python: str) -> str:
    return (
        "#!/bin/sh\n"
        "# mss-relay launcher written by `mss-relay install`: the Python environment\n"
        "# that has the relay package installed.\n"
        f'exec {shlex.quote(python)} -m relay.cli "$@"\n'
    )


def unit_text(template: str, place: Layout) -> str:
    return template.replace(UNIT_BIN, str(place.bindir / "mss-relay"))


class _Writer:
    def __init__(self, destdir: Path) -> None:
        self.destdir = destdir
        self.written: list[str] = []

    def path(self, target: PurePosixPath) -> Path:
        return self.destdir / str(target).lstrip("/")

    def folder(self, target: PurePosixPath, mode: int) -> None:
        path = self.path(target)
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)

    def file(self, target: PurePosixPath, data: bytes, mode: int, keep: bool = False) -> None:
        path = self.path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        if keep and path.exists():
            self.written.append(f"{target} (kept: already there)")
            return
        path.write_bytes(data)
        path.chmod(mode)
        self.written.append(str(target))


def install(prefix: str, destdir: Path, python: str) -> list[str]:
    """Write everything; return what was written (target paths). OSError/ValueError
    to the caller."""
    place = layout(prefix)
    share = resources.files("relay") / "share"
    out = _Writer(destdir)
    out.file(place.bindir / "mss-relay", launcher(python).encode(), 0o755)
    example = (share / "relay.example.toml").read_bytes()
    out.folder(place.confdir, 0o750)
    out.file(place.confdir / "relay.toml", example, 0o640, keep=True)
    out.file(place.confdir / "relay.example.toml", example, 0o644)
    out.folder(place.confdir / "tls", 0o750)
    policies = share / "policies"
    for entry in sorted(policies.iterdir(), key=lambda e: e.name):
        if entry.name.endswith((".toml", ".md")):
            out.file(place.confdir / "policies" / entry.name, entry.read_bytes(), 0o644)
    for sub in ("", "keys", "crl"):
        out.folder(place.statedir / sub if sub else place.statedir, 0o700)
    systemd = share / "systemd"
    unit = unit_text((systemd / "mss-relay.service").read_text(), place)
    out.file(place.unitdir / "mss-relay.service", unit.encode(), 0o644)
    out.file(
        place.sysusersdir / "mss-relay.conf", (systemd / "mss-relay.sysusers").read_bytes(), 0o644
    )
    out.file(
        place.tmpfilesdir / "mss-relay.conf", (systemd / "mss-relay.tmpfiles").read_bytes(), 0o644
    )
    out.file(place.docdir / "README.md", (share / "README.md").read_bytes(), 0o644)
    return out.written


def cmd_install(args: argparse.Namespace) -> int:
    destdir = Path(args.destdir or "/")
    try:
        written = install(args.prefix, destdir, args.python or sys.executable)
    except ValueError as exc:
        print(f"mss-relay install: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"mss-relay install: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for target in written:
        print(f"installed {target}")
    place = layout(args.prefix)
    if args.destdir:
        print(f"(under {destdir}; the paths above are those of the target system)")
    print(
        "next, as root on the target system:\n"
        f"  systemd-sysusers {place.sysusersdir}/mss-relay.conf\n"
        f"  systemd-tmpfiles --create {place.tmpfilesdir}/mss-relay.conf\n"
        f"  edit {place.confdir}/relay.toml; put the certificate, key and IGC-Santé CAs "
        f"in {place.confdir}/tls/\n"
        f"  mss-relay check-config --config {place.confdir}/relay.toml\n"
        "  systemctl daemon-reload && systemctl enable --now mss-relay"
    )
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add `install` to the `mss-relay` parser."""
    s = subparsers.add_parser(
        "install",
        help="lay out the command, config, policies, state folder and systemd files",
    )
    s.add_argument("--prefix", default="/", help="/ (default) or /usr/local")
    s.add_argument("--destdir", help="stage under this folder (packaging), not the live system")
    s.add_argument(
        "--python",
        help=f"the interpreter the launcher runs (default: this one, {sys.executable})",
    )
    s.set_defaults(func=cmd_install)
