"""The command line never lies and never shows a traceback (issue 11, point 5).

Every test runs the real `mss-relay` as a subprocess; those that read the store run on
both engines (the `storage` fixture).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import select
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from relay.audit.events import ImapFetched, MessageAccepted, TrustSpaceImported
from relay.cli import build_parser
from relay.config.model import StorageConfig
from relay.store.store import Store
from relay.tls.pki import DevPki
from tests.harness import LISTENER_NAMES, MARTIN_BOX, SHARED, free_ports, write_config

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def config_for(tmp_path: Path, pki: DevPki, storage: StorageConfig) -> Path:
    ports = dict(zip(LISTENER_NAMES, free_ports(len(LISTENER_NAMES)), strict=True))
    return write_config(tmp_path, pki, storage, ports)


# --------------------------------------------------------------------- check-config


def test_missing_certificate_is_refused_by_check_config_as_by_serve(
    tmp_path: Path, dev_pki: DevPki
) -> None:
    storage = StorageConfig(url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", key_file=tmp_path / "k")
    good = config_for(tmp_path, dev_pki, storage)
    ok = cli("check-config", str(good))
    assert ok.returncode == 0, ok.stderr
    missing = tmp_path / "absent" / "server.pem"
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace(str(dev_pki.server_cert), str(missing)))
    assert str(missing) in bad.read_text()
    checked = cli("check-config", str(bad))
    assert checked.returncode == 2
    assert f"{bad}: tls.certificate: file not found: {missing}" in checked.stderr
    assert "serve refuses this file" in checked.stderr
    served = cli("serve", "--config", str(bad))
    assert served.returncode == 2
    assert f"{bad}: tls.certificate: file not found: {missing}" in served.stderr
    no_traceback(checked)
    no_traceback(served)


def test_tls_files_openssl_refuses_are_refused_by_both(tmp_path: Path, dev_pki: DevPki) -> None:
    """A certificate file that exists but holds no certificate, a key of another
    certificate: check-config refused them as serve does (it passed them before)."""
    storage = StorageConfig(url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", key_file=tmp_path / "k")
    good = config_for(tmp_path, dev_pki, storage)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    _, other_key = dev_pki.cert_and_key("peer")
    for name, old, new in (
        ("garbage", str(dev_pki.server_cert), str(garbage)),
        ("mismatch", str(dev_pki.server_key), str(other_key)),
    ):
        bad = tmp_path / f"{name}.toml"
        bad.write_text(good.read_text().replace(old, new))
        assert new in bad.read_text()
        checked = cli("check-config", str(bad))
        assert checked.returncode == 2, (name, checked.stdout)
        assert checked.stderr.startswith(f"{bad}: tls: "), checked.stderr
        served = cli("serve", "--config", str(bad))
        assert served.returncode == 2, (name, served.stderr)
        assert f"{bad}: tls: " in served.stderr
        no_traceback(served)
        assert "internal error" not in served.stderr


def test_key_file_that_is_not_a_file_is_refused(tmp_path: Path, dev_pki: DevPki) -> None:
    """A missing key file is fine (a first start creates it); a folder in its place is
    refused by check-config, as by serve."""
    key_dir = tmp_path / "keys" / "blob.key"
    key_dir.mkdir(parents=True)
    storage = StorageConfig(url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", key_file=key_dir)
    config = config_for(tmp_path, dev_pki, storage)
    checked = cli("check-config", str(config))
    assert checked.returncode == 2
    assert f"{config}: storage.key_file: not a regular file: {key_dir}" in checked.stderr
    served = cli("serve", "--config", str(config))
    assert served.returncode == 2
    no_traceback(served)
    fresh = tmp_path / "fresh.toml"
    fresh.write_text(config.read_text().replace(str(key_dir), str(tmp_path / "new.key")))
    assert cli("check-config", str(fresh)).returncode == 0


def test_unreadable_policy_folder_is_an_error(tmp_path: Path, dev_pki: DevPki) -> None:
    storage = StorageConfig(url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", key_file=tmp_path / "k")
    good = config_for(tmp_path, dev_pki, storage)
    text = good.read_text().replace("[server]\n", f'[server]\npolicy_dir = "{tmp_path}/nope"\n', 1)
    bad = tmp_path / "nopolicy.toml"
    bad.write_text(text)
    checked = cli("check-config", "--config", str(bad))
    assert checked.returncode == 2, checked.stdout
    assert "nope" in checked.stderr
    assert cli("serve", "--config", str(bad)).returncode == 2


def test_shipped_demo_config_passes_once_its_pki_exists(tmp_path: Path) -> None:
    """demo.toml as `make demo` uses it: its header's commands, run in order, give a
    config check-config accepts (and before the PKI exists, it is refused)."""
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config" / "demo.toml", tmp_path / "config")
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    demo = tmp_path / "config" / "demo.toml"
    before = cli("check-config", str(demo))
    assert before.returncode == 2 and "tls.certificate: file not found" in before.stderr
    header = [
        line.lstrip("# ").split("  #")[0].strip()
        for line in demo.read_text().splitlines()
        if line.startswith("#   mss-relay ")
    ]
    assert [h.split()[1] for h in header] == ["dev-pki", "dev-issuer", "check-config", "serve"]
    for line in header[:3]:
        args = [a.replace("config/", f"{tmp_path}/config/") for a in shlex.split(line)[1:]]
        args = [a.replace("var/", f"{tmp_path}/var/") for a in args]
        done = cli(*args)
        assert done.returncode == 0, (line, done.stderr)
    # The serve line parses (it starts a daemon: parsing is what can be wrong with it).
    parsed = build_parser().parse_args(shlex.split(header[3])[1:])
    assert parsed.command == "serve" and parsed.config == "config/demo.toml"


def test_example_config_names_files_an_install_provides() -> None:
    """The example names production paths: check-config says which are missing, exit 2
    (serve would refuse it on this machine too)."""
    result = cli("check-config", "--config", str(REPO / "config" / "relay.example.toml"))
    assert result.returncode == 2
    assert "tls.certificate: file not found: /etc/mss-relay/tls/server.pem" in result.stderr
    no_traceback(result)


def test_toml_syntax_error_names_line_column_text_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "date.toml"
    bad.write_text(
        '[server]\nhostname = "x"\n\n[[mailboxes]]\naddress = "a@b.fr"\n\n'
        '[[mailboxes]]\naddress = "c@b.fr"\n[[mailboxes.coholders]]\n'
        'person = "p"\nvalid_until = 2026-13-01\n'
    )
    result = cli("check-config", str(bad))
    assert result.returncode == 2
    [line] = result.stderr.splitlines()[:1]
    assert line.startswith(f"{bad}: mailboxes[1].coholders[0].valid_until: ")
    assert "line 11, column" in line
    assert line.endswith(": valid_until = 2026-13-01")
    assert "YYYY-MM-DD" in line
    header = tmp_path / "header.toml"
    header.write_text("[server]\nhostname = 'x'\n[[mailboxes]\n")
    result = cli("check-config", str(header))
    assert result.returncode == 2
    assert f"{header}: <syntax>: TOML syntax error at line 3, column" in result.stderr
    assert result.stderr.splitlines()[0].endswith(": [[mailboxes]")


def test_check_config_takes_config_option_or_file_not_two(tmp_path: Path, dev_pki: DevPki) -> None:
    storage = StorageConfig(url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", key_file=tmp_path / "k")
    good = config_for(tmp_path, dev_pki, storage)
    assert cli("check-config", "--config", str(good)).returncode == 0
    assert cli("check-config", "-c", str(good), str(good)).returncode == 0
    both = cli("check-config", "-c", str(good), str(tmp_path / "other.toml"))
    assert both.returncode == 2 and "two files given" in both.stderr


def test_check_config_effective_prints_resolved_settings(tmp_path: Path, dev_pki: DevPki) -> None:
    storage = StorageConfig(url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", key_file=tmp_path / "k")
    ports = dict(zip(LISTENER_NAMES, free_ports(len(LISTENER_NAMES)), strict=True))
    good = write_config(tmp_path, dev_pki, storage, ports, limits="max_recipients = 7")
    result = cli("check-config", "--effective", "--config", str(good))
    assert result.returncode == 0, result.stderr
    data = tomllib.loads(result.stdout)
    assert data["limits"]["max_recipients"] == 7
    assert data["limits"]["max_line_bytes"] == 1000
    assert "max_recipients = 7\n" in result.stdout  # set: no "# default"
    assert "max_line_bytes = 1000  # default" in result.stdout
    assert data["storage"]["audit_key_path"] == str(tmp_path / "audit.key")
    assert data["tls"]["certificate"] == str(dev_pki.server_cert)
    assert [b["address"] for b in data["mailboxes"]][:1] == [SHARED]
    assert "$argon2id$" not in result.stdout
    assert "password_hash: set (hidden)" in result.stdout


def test_demo_header_commands_parse() -> None:
    for line in (REPO / "config" / "demo.toml").read_text().splitlines():
        if line.startswith("#   mss-relay "):
            command = line.lstrip("# ").split("  #")[0]
            build_parser().parse_args(shlex.split(command)[1:])  # exits 2 if not


# ----------------------------------------------------------------------------- audit


async def seed_audit(config: Path) -> None:
    """Rows the CLI reads: three messages accepted (one hour apart in sequence, all
    now), a FETCH naming two of them, a trust-space import."""
    from relay.config import load

    store = await Store.open(load(config).storage)
    try:
        for n in range(3):
            await store.record(
                MessageAccepted(
                    person="martin",
                    box=MARTIN_BOX,
                    protocol="submission",
                    message_id=f"m{n}@cpts-demo.mssante.fr",
                    sender=MARTIN_BOX,
                    recipients=("x@peer.mssante.fr",),
                    size_bytes=100 + n,
                    queue_id=f"{n:016x}",
                )
            )
        await store.record(
            ImapFetched(
                person="dupont",
                box=SHARED,
                folder="INBOX",
                uids=(1, 2),
                message_ids=("m1@cpts-demo.mssante.fr", "m2@cpts-demo.mssante.fr"),
                items=("BODY[]",),
            ),
            TrustSpaceImported(source="x", domains=1, generated=None),
        )
    finally:
        await store.close()


async def test_audit_show_filters(tmp_path: Path, dev_pki: DevPki, storage: StorageConfig) -> None:
    config = config_for(tmp_path, dev_pki, storage)
    await seed_audit(config)
    c = str(config)

    def seqs(*args: str) -> list[int]:
        result = cli("audit", "show", "--config", c, "--json", *args)
        assert result.returncode == 0, result.stderr
        return [json.loads(line)["seq"] for line in result.stdout.splitlines()]

    every = seqs()
    assert every == sorted(every) and len(every) >= 5
    assert seqs("--limit", "2") == [every[-1], every[-2]]  # the newest, newest first
    by_id = cli("audit", "show", "--config", c, "--message-id", "<m1@cpts-demo.mssante.fr>")
    assert by_id.returncode == 0
    assert [line.split()[3] for line in by_id.stdout.splitlines()] == [
        "message.accepted",
        "imap.fetch",
    ]
    assert len(seqs("--message-id", "m0@cpts-demo.mssante.fr")) == 1
    assert seqs("--message-id", "m@cpts-demo.mssante.fr") == []  # a prefix is not a match
    assert seqs("--since", "2h") == every
    assert seqs("--since", "yesterday") == every
    assert seqs("--since", "today", "--until", "now") == every
    assert seqs("--until", "7d") == []
    tomorrow = (dt.date.today() + dt.timedelta(days=1)).isoformat()
    assert seqs("--since", tomorrow) == []
    assert seqs("--since", "00:00") == every
    for bad in ("last tuesday", "25:00", "2026-02-30"):
        refused = cli("audit", "show", "--config", c, "--since", bad)
        assert refused.returncode == 2, bad
        assert refused.stderr.startswith("mss-relay audit: --since: "), refused.stderr
        assert len(refused.stderr.splitlines()) == 1
        no_traceback(refused)
    assert seqs("--person", "dupont", "--box", SHARED) == [every[3]]


async def test_unknown_box_or_person_is_an_error(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> None:
    config = config_for(tmp_path, dev_pki, storage)
    await seed_audit(config)
    c = str(config)
    box = cli("audit", "show", "--config", c, "--box", "nobody@cpts-demo.mssante.fr")
    assert box.returncode == 2 and "unknown box 'nobody@cpts-demo.mssante.fr'" in box.stderr
    person = cli("audit", "export", "--config", c, "--person", "Martin")
    assert person.returncode == 2 and "unknown person 'Martin'" in person.stderr
    assert person.stdout == ""
    # Known but with no matching row: empty, exit 0 (dupont is in the config).
    quiet = cli("audit", "show", "--config", c, "--person", "leroy")
    assert quiet.returncode == 0 and quiet.stdout == ""
    patients = cli("patients", "list", "--config", c, "nobody@cpts-demo.mssante.fr")
    assert patients.returncode == 2 and "unknown box" in patients.stderr
    assert cli("patients", "list", "--config", c, SHARED).returncode == 0


async def test_audit_export_stdout_is_only_json_lines(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> None:
    config = config_for(tmp_path, dev_pki, storage)
    await seed_audit(config)
    result = cli("audit", "export", "--config", str(config), "--limit", "3")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)  # chain order
    assert result.stderr.strip().endswith("3 audit rows exported")
    whole = cli("audit", "export", "--config", str(config))
    all_rows = [json.loads(line) for line in whole.stdout.splitlines()]
    # the first export recorded its audit.exported row after them
    assert [r["seq"] for r in all_rows][-4:-1] == [r["seq"] for r in rows]


# ------------------------------------------------------------- pipes, ports, EOF


async def test_closed_stdout_is_not_a_traceback(
    tmp_path: Path, dev_pki: DevPki, storage: StorageConfig
) -> None:
    """`queue list | head`: the reader is gone before the command writes."""
    config = config_for(tmp_path, dev_pki, storage)
    await seed_audit(config)
    for command in (["queue", "list"], ["audit", "show"]):
        read, write = os.pipe()
        os.close(read)  # like `head` that has exited
        proc = subprocess.run(
            [sys.executable, "-m", "relay.cli", *command, "--config", str(config)],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        os.close(write)
        assert proc.returncode == 141, proc.stderr
        assert proc.stderr == "", proc.stderr
    pipeline = (
        f"{shlex.quote(sys.executable)} -m relay.cli audit show --config {shlex.quote(str(config))}"
        " | head -n 1"
    )
    shell = subprocess.run(
        ["/bin/sh", "-c", pipeline],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert shell.returncode == 0 and len(shell.stdout.splitlines()) == 1
    assert "Traceback" not in shell.stderr


def test_port_in_use_is_one_line(tmp_path: Path, dev_pki: DevPki) -> None:
    storage = StorageConfig(url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", key_file=tmp_path / "k")
    ports = dict(zip(LISTENER_NAMES, free_ports(len(LISTENER_NAMES)), strict=True))
    config = write_config(tmp_path, dev_pki, storage, ports)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports["imap"]))
        taken.listen()
        result = cli("serve", "--config", str(config))
    assert result.returncode == 1
    no_traceback(result)
    [line] = [x for x in result.stderr.splitlines() if x.startswith("mss-relay:")]
    assert f"('127.0.0.1', {ports['imap']})" in line and "address already in use" in line


def test_passwd_end_of_input() -> None:
    empty = cli("passwd", stdin="")
    assert empty.returncode == 2
    assert empty.stderr == "mss-relay passwd: no password read (end of input)\n"


def test_passwd_ctrl_d_on_a_terminal() -> None:
    """Ctrl-D at the `Password:` prompt of a real terminal (a pty)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI, with the pty as its controlling terminal
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "relay.cli", "passwd"])  # noqa: S606
    seen = b""
    deadline = time.monotonic() + 30
    try:
        while b"Password:" not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 1)[0]:
                seen += os.read(fd, 1024)
        assert b"Password:" in seen, seen
        os.write(fd, b"\x04")
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 2, seen
    assert b"no password read (end of input)" in seen
    assert b"Traceback" not in seen


@pytest.mark.parametrize("command", [["queue", "list"], ["audit", "verify"], ["dns-records"]])
def test_store_commands_take_config(command: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "none.toml"
    result = cli(*command, "--config", str(missing))
    assert result.returncode == 2
    assert f"{missing}: <file>: cannot read" in result.stderr
    no_traceback(result)


def test_store_never_created_is_one_line(tmp_path: Path, dev_pki: DevPki) -> None:
    """`audit show` before the first `serve`: the SQLite folder does not exist yet."""
    absent = tmp_path / "never" / "relay.db"
    storage = StorageConfig(url=f"sqlite+aiosqlite:///{absent}", key_file=tmp_path / "k")
    config = config_for(tmp_path, dev_pki, storage)
    result = cli("audit", "show", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"the folder {absent.parent} does not exist, serve creates it" in result.stderr
    assert "Background on this error" not in result.stderr
