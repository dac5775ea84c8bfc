"""Packaging and install (issue 11, point 7): a real wheel built by pip carries the
policies, the example config and the systemd files; `mss-relay install` run from that
wheel lays out a system under a DESTDIR whose paths agree with the unit, which
`systemd-analyze verify` and `systemd-analyze security --offline=true` accept."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIPPED = {
    "relay/share/policies/mssante.toml": "policies/mssante.toml",
    "relay/share/policies/patient.toml": "policies/patient.toml",
    "relay/share/policies/README.md": "policies/README.md",
    "relay/share/relay.example.toml": "config/relay.example.toml",
    "relay/share/systemd/mss-relay.service": "systemd/mss-relay.service",
    "relay/share/systemd/mss-relay.sysusers": "systemd/mss-relay.sysusers",
    "relay/share/systemd/mss-relay.tmpfiles": "systemd/mss-relay.tmpfiles",
    "relay/share/README.md": "README.md",
}
MAX_EXPOSURE = 1.6


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheel `pip wheel` builds from this checkout (build isolation, as a packager
    runs it; the build backend comes from the same index `make` installs from)."""
    out = tmp_path_factory.mktemp("wheel")
    # From a copy: setuptools builds in the source tree (build/), where files left by an
    # earlier build would end up in this wheel too.
    source = tmp_path_factory.mktemp("source") / "mss-relay"
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [whl] = out.glob("mss_relay-*.whl")
    yield whl


@pytest.fixture(scope="module")
def unpacked(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel's files, importable with PYTHONPATH (ahead of the editable checkout)."""
    target = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(target)
    return target


def from_wheel(unpacked: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`mss-relay ARGS` with the relay package taken from the wheel, not the checkout."""
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
    )


def test_wheel_carries_policies_config_and_systemd_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for inside, source in SHIPPED.items():
            assert inside in names, f"{inside} missing from {wheel.name}"
            assert z.read(inside) == (REPO / source).read_bytes(), inside
        assert "relay/py.typed" in names
        assert any(n.startswith("relay/store/migrations/versions/0001") for n in names)


def test_install_from_the_wheel_into_a_destdir(unpacked: Path, tmp_path: Path) -> None:
    where = subprocess.run(
        [sys.executable, "-c", "import relay; print(relay.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(unpacked)},
    )
    assert where.stdout.strip() == str(unpacked / "relay" / "__init__.py"), where.stderr
    dest = tmp_path / "root"
    done = from_wheel(unpacked, tmp_path, "install", "--prefix", "/", "--destdir", str(dest))
    assert done.returncode == 0, done.stderr
    assert "systemd-sysusers /usr/lib/sysusers.d/mss-relay.conf" in done.stdout

    def mode(rel: str) -> int:
        return (dest / rel).stat().st_mode & 0o777

    assert mode("usr/bin/mss-relay") == 0o755
    assert mode("etc/mss-relay") == 0o750
    assert mode("etc/mss-relay/relay.toml") == 0o640
    for state in ("var/lib/mss-relay", "var/lib/mss-relay/keys", "var/lib/mss-relay/crl"):
        assert mode(state) == 0o700, state
    for inside, source in SHIPPED.items():
        if inside.startswith("relay/share/policies/"):
            installed = dest / "etc/mss-relay/policies" / Path(source).name
            assert installed.read_bytes() == (REPO / source).read_bytes()

    # The launcher runs the package (this interpreter has the dependencies).
    launched = subprocess.run(
        [str(dest / "usr/bin/mss-relay"), "ins", "check", "279035121518989"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert launched.returncode == 0, launched.stderr

    # Paths agree: unit, example config, tmpfiles.d, sysusers.d.
    unit = (dest / "usr/lib/systemd/system/mss-relay.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if re.match(r"[A-Z]\w*=", line)
    )
    assert settings["ExecStart"].split()[0] == "/usr/bin/mss-relay"
    config_file = settings["ExecStart"].split("--config ")[1].split()[0]
    assert (dest / config_file.lstrip("/")).is_file()
    assert settings["StateDirectory"] == "mss-relay"  # /var/lib/mss-relay
    assert settings["ConfigurationDirectory"] == "mss-relay"  # /etc/mss-relay
    assert settings["ProtectSystem"] == "strict"  # /etc read-only: no keys there
    example = tomllib.loads((dest / config_file.lstrip("/")).read_text())
    for key in ("key_file", "audit_key_file"):
        path = Path(example["storage"][key])
        assert path.parent == Path("/var/lib/mss-relay/keys"), key
        assert (dest / str(path.parent).lstrip("/")).is_dir()
    assert example["server"]["data_dir"] == "/var/lib/mss-relay"
    # `mss-relay reload/status/who/kick` from an admin's shell find the socket the
    # daemon opens in its RuntimeDirectory= (no $RUNTIME_DIRECTORY in that shell).
    socket_dir = Path(example["server"]["control_socket"]).parent
    assert socket_dir == Path("/run") / settings["RuntimeDirectory"]
    assert settings["ExecReload"].startswith("/usr/bin/mss-relay reload")
    assert (dest / example["server"]["policy_dir"].lstrip("/") / "patient.toml").is_file()
    for crl in example["tls"]["crl_files"]:
        assert (dest / str(Path(crl).parent).lstrip("/")).is_dir()
    tmpfiles = (dest / "usr/lib/tmpfiles.d/mss-relay.conf").read_text()
    for line in tmpfiles.splitlines():
        if line.startswith(("d ", "z ")):
            _, folder, perm, user, group, *_ = line.split()
            assert mode(folder.lstrip("/")) == int(perm, 8), line
            # Under the hardened unit the daemon runs as mss-relay: what it reads is
            # its group's (ConfigurationDirectory= leaves /etc/mss-relay to root).
            if folder.startswith("/etc/"):
                assert (user, group) == ("root", "mss-relay"), line
    sysusers = (dest / "usr/lib/sysusers.d/mss-relay.conf").read_text()
    assert re.search(r"^u mss-relay .* /var/lib/mss-relay$", sysusers, re.M)

    # A second install keeps the admin's relay.toml.
    (dest / "etc/mss-relay/relay.toml").write_text("# edited\n")
    again = from_wheel(unpacked, tmp_path, "install", "--destdir", str(dest))
    assert again.returncode == 0 and "relay.toml (kept: already there)" in again.stdout
    assert (dest / "etc/mss-relay/relay.toml").read_text() == "# edited\n"

    # The installed unit, as systemd reads it.
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (.ci/run installs the systemd package)")
    installed_unit = dest / "usr/lib/systemd/system/mss-relay.service"
    # verify resolves ExecStart= on this machine: point it at the launcher installed
    # under DESTDIR (the same file the target's /usr/bin/mss-relay will be).
    check = tmp_path / "mss-relay.service"
    check.write_text(unit.replace("/usr/bin/mss-relay", str(dest / "usr/bin/mss-relay")))
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(check)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in (verified.stdout + verified.stderr).splitlines()
        if "mss-relay.service" in line
    ]
    assert verified.returncode == 0 and problems == [], verified.stdout + verified.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(installed_unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for mss-relay\.service: ([0-9.]+)", security.stdout)
    assert found is not None, security.stdout + security.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, security.stdout


def test_install_prefix_usr_local_and_refusals(unpacked: Path, tmp_path: Path) -> None:
    dest = tmp_path / "root"
    local = from_wheel(
        unpacked, tmp_path, "install", "--prefix", "/usr/local", "--destdir", str(dest)
    )
    assert local.returncode == 0, local.stderr
    unit = (dest / "etc/systemd/system/mss-relay.service").read_text()
    assert "ExecStart=/usr/local/bin/mss-relay serve" in unit
    assert "/usr/bin/mss-relay" not in unit
    assert (dest / "usr/local/bin/mss-relay").is_file()
    assert (dest / "etc/tmpfiles.d/mss-relay.conf").is_file()
    bad = from_wheel(unpacked, tmp_path, "install", "--prefix", "/opt/x", "--destdir", str(dest))
    assert bad.returncode == 2
    assert bad.stderr == "mss-relay install: --prefix must be / or /usr/local, got '/opt/x'\n"
    blocked = tmp_path / "file"
    blocked.write_text("")
    refused = from_wheel(unpacked, tmp_path, "install", "--destdir", str(blocked))
    assert refused.returncode == 2 and refused.stderr.startswith("mss-relay install: ")
    assert "Traceback" not in refused.stderr


def test_tmpfiles_gives_the_daemon_its_config(unpacked: Path, tmp_path: Path) -> None:
    """systemd-tmpfiles on the installed tree (as on first boot): the daemon's group
    can read /etc/mss-relay, relay.toml and tls/, and owns the state folders."""
    if shutil.which("systemd-tmpfiles") is None:
        pytest.skip("systemd-tmpfiles not installed (.ci/run installs the systemd package)")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles sets owners: needs root")
    dest = tmp_path / "root"
    done = from_wheel(unpacked, tmp_path, "install", "--destdir", str(dest))
    assert done.returncode == 0, done.stderr
    # The user systemd-sysusers would make, in the target's own user database.
    (dest / "etc/passwd").write_text(
        "root:x:0:0::/root:/bin/sh\nmss-relay:x:990:990::/var/lib/mss-relay:/usr/sbin/nologin\n"
    )
    (dest / "etc/group").write_text("root:x:0:\nmss-relay:x:990:\n")
    (dest / "etc/mss-relay/tls/server.key").write_text("")
    conf = dest / "usr/lib/tmpfiles.d/mss-relay.conf"
    ran = subprocess.run(
        ["systemd-tmpfiles", f"--root={dest}", "--create", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0 and ran.stderr == "", ran.stderr

    def owner(rel: str) -> tuple[int, int, int]:
        st = (dest / rel).stat()
        return st.st_uid, st.st_gid, st.st_mode & 0o777

    assert owner("etc/mss-relay") == (0, 990, 0o750)
    assert owner("etc/mss-relay/relay.toml") == (0, 990, 0o640)
    assert owner("etc/mss-relay/tls")[:2] == (0, 990)
    assert owner("etc/mss-relay/tls/server.key")[:2] == (0, 990)
    for state in ("var/lib/mss-relay", "var/lib/mss-relay/keys", "var/lib/mss-relay/crl"):
        assert owner(state) == (990, 990, 0o700), state
