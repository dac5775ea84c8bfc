"""Parity check: the same messages in mss-relay and in Dovecot, the answers compared.

Appends every ``*.eml`` of a corpus folder (default ``tests/message/parity``) to a
throw-away folder on both servers, then asks both the same FETCH items (ENVELOPE,
BODY, BODYSTRUCTURE, RFC822.SIZE, sections of every part, BINARY.SIZE) and the same
SEARCH keys, and prints every answer that differs. It prints differences, not
figures: each one is either turned into a table-driven test of ours
(`tests/message/test_parity.py`) or kept with a comment citing the RFC where
Dovecot is the one that strays.

    flock /work/team/reference.lock ../shared/reference/dovecot-ref.sh start
    python -m bench.imap_parity --ours 127.0.0.1:32993 --ours-user martin \\
        --ours-pass martin-demo --dovecot 127.0.0.1:10993
    ../shared/reference/dovecot-ref.sh stop

Both servers are reached over implicit TLS on loopback; certificates are not checked
(the reference uses a self-signed one). The folder ``parity`` is deleted and created
again on both sides.
"""

from __future__ import annotations

import argparse
import imaplib
import json
import re
import ssl
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

FOLDER = "parity"
DATE = '"02-Mar-2026 10:00:00 +0100"'
ITEMS = ("ENVELOPE", "BODY", "BODYSTRUCTURE", "RFC822.SIZE")
SECTIONS = ("HEADER", "TEXT", "1", "1.MIME", "2", "2.MIME", "2.HEADER", "2.1", "2.2", "3", "4")
SEARCHES = (
    "FROM andre",
    "FROM müller",
    "FROM cpts.example",
    "TO second@cpts.example",
    "TO third",
    "TO first",
    "CC cc2",
    "CC cc1",
    "SUBJECT résultats",
    'SUBJECT "second subject"',
    "SUBJECT repeated",
    "TO group",
    "CC nodomain",
    "BCC zé",
    "HEADER Content-Type mixed",
    "BODY élevé",
    "TEXT normaux",
    "BODY inner",
    "SENTON 2-Mar-2026",
    "SENTON 1-Mar-2026",
    "SENTBEFORE 2-Mar-2026",
    "SENTSINCE 3-Mar-2026",
    "SENTSINCE 2-Mar-2026",
    "SENTON 3-Mar-2026",
    "SENTBEFORE 3-Mar-2026",
    "SENTON 2-Mar-1999",
    "BEFORE 1-Jan-2000",
    "LARGER 600",
)


def _connect(address: str, user: str, password: str) -> imaplib.IMAP4_SSL:
    host, _, port = address.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"{address}: loopback only")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    m = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx, timeout=30)
    m.login(user, password)
    return m


def _flatten(data: Sequence[Any]) -> bytes:
    out = b""
    for item in data:
        if item is None:
            continue
        out += item[0] + item[1] if isinstance(item, tuple) else item
    return out


def _load(m: imaplib.IMAP4_SSL, corpus: list[Path]) -> None:
    m.delete(FOLDER)
    typ, data = m.create(FOLDER)
    if typ != "OK":
        raise SystemExit(f"CREATE {FOLDER}: {data}")
    for path in corpus:
        typ, data = m.append(FOLDER, "", DATE, path.read_bytes())
        if typ != "OK":
            raise SystemExit(f"APPEND {path.name}: {data}")
    m.select(FOLDER)


_UID = re.compile(rb"^\d+ \(|\)$")


def _fetch(m: imaplib.IMAP4_SSL, n: int, item: str) -> bytes:
    typ, data = m.fetch(str(n), f"({item})")
    if typ != "OK":
        return f"{typ} {data}".encode()
    return _UID.sub(b"", _flatten(data))


def _search(m: imaplib.IMAP4_SSL, key: str) -> bytes:
    words = key.split(" ")
    if not words[-1].isascii():
        # 8-bit search strings go as a literal (RFC 3501 §6.4.4 CHARSET UTF-8)
        m.literal = words.pop().encode("utf-8")  # type: ignore[assignment]
    try:
        typ, data = m.search("UTF-8", *words)
    except imaplib.IMAP4.error as exc:
        return f"error {exc}".encode()
    return f"{typ} ".encode() + _flatten(data)


_LITERAL = re.compile(rb"\{(\d+)\}\r\n")


def _known(request: str, a: bytes, b: bytes) -> bool:
    """Differences we keep on purpose (see tests/message/test_parity.py):

    * case in BODY/BODYSTRUCTURE: we write types, subtypes, parameter names and the
      encoding in upper case, as RFC 3501 §7.4.2 does in its examples (they are
      case-insensitive, RFC 2045 §5.1); Dovecot copies the header's spelling;
    * a section that does not exist is NIL for us (BODY[section] is an nstring,
      RFC 3501 §7.4.2), the empty string for Dovecot;
    * a string sent as a literal by one side and quoted by the other.
    """

    def norm(x: bytes) -> bytes:
        x = _LITERAL.sub(lambda m: b"", x) if b"{" in x else x
        return x.replace(b'"', b"").lower() if request.startswith(("BODY", "ENVELOPE")) else x

    if request.startswith("BODY.PEEK[") and (a.endswith(b" NIL") and b.endswith(b" {0}")):
        return True
    return norm(a) == norm(b)


def _requests() -> list[str]:
    return [
        *ITEMS,
        *(f"BODY.PEEK[{s}]" for s in SECTIONS),
        *(f"BINARY.SIZE[{p}]" for p in ("1", "2")),
    ]


def record(m: imaplib.IMAP4_SSL, corpus: list[Path]) -> dict[str, Any]:
    """Every answer of one server, as JSON (bytes as Latin-1 text)."""
    fetch = {
        path.name: {rq: _fetch(m, n, rq).decode("latin-1") for rq in _requests()}
        for n, path in enumerate(corpus, start=1)
    }
    search = {key: _search(m, key).decode("utf-8") for key in SEARCHES}
    return {"date": DATE, "fetch": fetch, "search": search}


def differences(
    ours: imaplib.IMAP4_SSL, theirs: imaplib.IMAP4_SSL, corpus: list[Path], *, strict: bool
) -> Iterator[tuple[str, str, bytes, bytes]]:
    """(message, request, ours, Dovecot's) for every answer that differs (beyond the
    known differences unless `strict`)."""
    for n, path in enumerate(corpus, start=1):
        for request in _requests():
            a, b = _fetch(ours, n, request), _fetch(theirs, n, request)
            if a != b and (strict or not _known(request, a, b)):
                yield path.name, request, a, b
    for key in SEARCHES:
        a, b = _search(ours, key), _search(theirs, key)
        if a != b:
            yield "(all)", f"SEARCH {key}", a, b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ours", default="127.0.0.1:2993", help="mss-relay IMAPS HOST:PORT")
    parser.add_argument("--ours-user", default="martin")
    parser.add_argument("--ours-pass", default="martin-demo")
    parser.add_argument("--dovecot", default="127.0.0.1:10993", help="reference IMAPS")
    parser.add_argument("--dovecot-user", default="testuser")
    parser.add_argument("--dovecot-pass", default="testpass")
    parser.add_argument("--corpus", type=Path, default=Path("tests/message/parity"))
    parser.add_argument("--only", help="one message file name")
    parser.add_argument("--strict", action="store_true", help="show the known differences too")
    parser.add_argument(
        "--record",
        type=Path,
        help="write Dovecot's answers to this JSON file (the oracle of "
        "tests/message/test_parity.py) instead of comparing",
    )
    args = parser.parse_args(argv)
    corpus = sorted(args.corpus.glob("*.eml"))
    theirs = _connect(args.dovecot, args.dovecot_user, args.dovecot_pass)
    _load(theirs, corpus)
    if args.record is not None:
        args.record.write_text(json.dumps(record(theirs, corpus), indent=1, sort_keys=True) + "\n")
        print(f"imap_parity: {len(corpus)} messages, Dovecot's answers in {args.record}")
        theirs.logout()
        return 0
    ours = _connect(args.ours, args.ours_user, args.ours_pass)
    _load(ours, corpus)
    count = 0
    for name, request, a, b in differences(ours, theirs, corpus, strict=args.strict):
        if args.only and name not in (args.only, "(all)"):
            continue
        count += 1
        print(f"--- {name}: {request}\n  ours:    {a!r}\n  dovecot: {b!r}")
    print(f"imap_parity: {len(corpus)} messages, {count} differences")
    for m in (ours, theirs):
        m.logout()
    return 0


if __name__ == "__main__":
    sys.exit(main())
