"""TOML → `Config`, strictly.

Every problem in the file is collected, each located by its key path
(`mailboxes[0].coholders[1].person`), and all are raised together in one
`ConfigError`: an admin fixing a file should see everything that is wrong at once.
Unknown keys are errors (a misspelt `valid_untill` must not silently give a
replacement unlimited access). Paths are resolved against the config file's folder.

Pure: reads one file in `load`, imports no asyncio or I/O framework.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography import x509

from relay.config.model import (
    ALL_METHODS,
    AuthMethod,
    BoxType,
    Coholder,
    Config,
    Endpoint,
    HttpEndpoint,
    IssuerConfig,
    Limits,
    ListenerConfig,
    ListenerKind,
    Mailbox,
    Person,
    Right,
    Route,
    SeenMode,
    ServerConfig,
    StorageConfig,
    TlsConfig,
    TlsMode,
    UpstreamConfig,
)
from relay.config.syntax import describe_syntax_error
from relay.identity.passwords import is_argon2id_hash

__all__ = ["ConfigError", "Problem", "check_files", "load", "load_text"]

_E = TypeVar("_E", bound=enum.Enum)
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a config file, located by its key path."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


class ConfigError(Exception):
    """A config file could not be loaded; `problems` holds every reason found."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# --------------------------------------------------------------------------- syntax

SQLITE_PREFIX = "sqlite+aiosqlite://"
POSTGRES_PREFIX = "postgresql+asyncpg://"

_PERSON_ID = re.compile(r"[a-z0-9][a-z0-9._-]*")
_RPPS = re.compile(r"[0-9]{11}")
_STRUCTURE_ID = re.compile(r"[0-9]{9}|[0-9]{14}")  # FINESS | SIRET
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# RFC 1035 §2.3.1 / RFC 1123 §2.1 label (letters, digits, hyphens; not at the ends).
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# RFC 5322 §3.2.3 atext; a dot-atom local part (quoted local parts are not accepted).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")


class _Invalid(Exception):
    """A value has the right TOML type but is not acceptable; carries the message."""


def _domain(text: str) -> str:
    """An ASCII domain name, lower-cased (RFC 1035 §2.3.4 lengths)."""
    name = text.lower()
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise _Invalid(
            f"{text!r} is not a valid domain name "
            "(letters, digits, hyphens; use the xn-- form for internationalised names)"
        )
    return name


def _route_domain(text: str) -> str:
    if text.startswith("*."):
        return "*." + _domain(text[2:])
    return _domain(text)


def _addr_spec(text: str) -> str:
    """An RFC 5321 §4.1.2 mailbox (dot-atom local part), lower-cased."""
    local, at, domain = text.rpartition("@")
    if not at or not _DOT_ATOM.fullmatch(local):
        raise _Invalid(f"{text!r} is not a valid address (expected local-part@domain)")
    # RFC 5321 §4.5.3.1.1: local part at most 64 octets; §4.5.3.1.3 path 256.
    if len(local) > 64 or len(text) > 254:
        raise _Invalid(f"{text!r} is too long (local part ≤ 64, address ≤ 254 characters)")
    return f"{local.lower()}@{_domain(domain)}"


def _listen_address(text: str) -> tuple[str, int]:
    """`127.0.0.1:2587` or `[::1]:143` → (host, port); the host must be an IP literal."""
    bracketed = re.fullmatch(r"\[([^\]]*)\]:([^:]*)", text)
    if bracketed:
        host_text, port_text = bracketed.groups()
    else:
        host_text, sep, port_text = text.rpartition(":")
        if not sep:
            raise _Invalid(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:2587 or [::1]:143")
        if ":" in host_text:
            raise _Invalid(f"{text!r}: an IPv6 address goes in brackets, e.g. [::1]:143")
    try:
        host = ipaddress.ip_address(host_text)
    except ValueError:
        raise _Invalid(
            f"{text!r}: the host must be an IP address (e.g. 127.0.0.1, 0.0.0.0, [::])"
        ) from None
    if bracketed and host.version != 6:
        raise _Invalid(f"{text!r}: only IPv6 addresses go in brackets")
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise _Invalid(f"{text!r}: the port must be a number from 1 to 65535")
    return host.compressed, int(port_text)


# Gateway mode endpoints: RFC 5092 imap:// (STARTTLS required, RFC 2595) and imaps://
# (implicit TLS, RFC 8314); submission on smtp:// (587, STARTTLS required, RFC 6409)
# or smtps:// (465, implicit TLS, RFC 8314 §3.3). Plain text is never used.
_IMAP_SCHEMES = {"imaps": (TlsMode.IMPLICIT, 993), "imap": (TlsMode.STARTTLS, 143)}
_SUBMISSION_SCHEMES = {"smtps": (TlsMode.IMPLICIT, 465), "smtp": (TlsMode.STARTTLS, 587)}


def _endpoint(schemes: dict[str, tuple[TlsMode, int]], example: str) -> Callable[[str], Endpoint]:
    def parse(text: str) -> Endpoint:
        scheme, sep, rest = text.partition("://")
        if not sep or scheme.lower() not in schemes:
            allowed = " or ".join(f"{s}://" for s in schemes)
            raise _Invalid(f"{text!r}: expected {allowed}HOST[:PORT], e.g. {example}")
        mode, default_port = schemes[scheme.lower()]
        host, colon, port_text = rest.rstrip("/").rpartition(":")
        if not colon:
            host, port_text = rest.rstrip("/"), str(default_port)
        if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise _Invalid(f"{text!r}: the port must be a number from 1 to 65535")
        try:
            host = ipaddress.ip_address(host.strip("[]")).compressed
        except ValueError:
            host = _domain(host)
        return Endpoint(host=host, port=int(port_text), tls=mode)

    return parse


def _folder_name(text: str) -> str:
    """A local folder name ("/" separated, as IMAP clients see it inside the box)."""
    if not text or text.startswith("/") or text.endswith("/") or "//" in text:
        raise _Invalid(f"{text!r}: a folder name is not empty and has no empty level")
    if any(not c.isprintable() for c in text):
        raise _Invalid(f"{text!r}: a folder name has no control characters")
    if text.upper() == "INBOX" or text[:6].upper() == "INBOX/":
        return "INBOX" + text[5:]
    return text


def _fingerprint(text: str) -> str:
    """SHA-256 fingerprint, with or without colons → 64 lower-case hex digits."""
    value = text.replace(":", "").lower()
    if not _SHA256_HEX.fullmatch(value):
        raise _Invalid(f"{text!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")
    return value


def _login(text: str) -> str:
    # `*` separates person and box in the `person*box` login form (DESIGN.md).
    if not text or any(c.isspace() or c == "*" or not c.isprintable() for c in text):
        raise _Invalid(f"{text!r}: a login must be non-empty, without spaces or '*'")
    return text


def _peer_dn(text: str) -> str:
    try:
        x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        raise _Invalid(f"{text!r} is not an RFC 4514 distinguished name: {exc}") from None
    return text


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        if not regex.fullmatch(text):
            raise _Invalid(f"{text!r} is not {what}")
        return text

    return check


_person_id = _pattern(_PERSON_ID, "a valid person id ([a-z0-9][a-z0-9._-]*)")
_rpps = _pattern(_RPPS, "an RPPS number (exactly 11 digits)")
_structure_id = _pattern(_STRUCTURE_ID, "a FINESS (9 digits) or SIRET (14 digits) number")


def _password_hash(text: str) -> str:
    if not is_argon2id_hash(text):
        raise _Invalid(
            "not an argon2id PHC string ($argon2id$v=19$m=...,t=...,p=...$salt$hash); "
            "generate one with `mss-relay passwd`"
        )
    return text


# --------------------------------------------------------------------------- reader


def _describe(value: object) -> str:
    match value:
        case bool():
            return "a boolean"
        case int():
            return "an integer"
        case float():
            return "a float"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "a table"
        case dt.datetime():
            return "a date-time"
        case dt.date():
            return "a date"
        case dt.time():
            return "a time"
    return type(value).__name__


_MISSING = object()


class _Table:
    """A TOML table being read: remembers which keys were used and where it sits."""

    def __init__(self, problems: list[Problem], file: str, data: dict[str, object], path: str):
        self._problems = problems
        self._file = file
        self._data = data
        self.path = path
        self._used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def problem(self, key: str, message: str) -> None:
        self._problems.append(Problem(self._file, key, message))

    def has(self, name: str) -> bool:
        return name in self._data

    def _raw(self, name: str) -> object:
        self._used.add(name)
        return self._data.get(name, _MISSING)

    def raw_string(self, name: str) -> str | None:
        value = self._data.get(name)
        return value if isinstance(value, str) and value else None

    def _wrong_type(self, key: str, expected: str, value: object) -> None:
        self.problem(key, f"expected {expected}, got {_describe(value)}")

    def _missing(self, name: str) -> None:
        self.problem(self.key(name), "required key is missing")

    def string(self, name: str, *, required: bool = False) -> str | None:
        value = self._raw(name)
        if value is _MISSING:
            if required:
                self._missing(name)
            return None
        if not isinstance(value, str):
            self._wrong_type(self.key(name), "a string", value)
            return None
        if required and not value:
            self.problem(self.key(name), "must not be empty")
            return None
        return value

    def parsed(self, name: str, parse: Callable[[str], _T], *, required: bool = False) -> _T | None:
        text = self.string(name, required=required)
        if text is None:
            return None
        return self.parse_value(self.key(name), text, parse)

    def parse_value(self, key: str, text: str, parse: Callable[[str], _T]) -> _T | None:
        try:
            return parse(text)
        except _Invalid as exc:
            self.problem(key, str(exc))
            return None

    def choice(
        self, name: str, kind: type[_E], *, default: _E | None = None, required: bool = False
    ) -> _E | None:
        text = self.string(name, required=required)
        if text is None:
            return default
        return self.choice_value(self.key(name), text, kind)

    def choice_value(self, key: str, text: str, kind: type[_E]) -> _E | None:
        for member in kind:
            if member.value == text:
                return member
        allowed = ", ".join(f'"{m.value}"' for m in kind)
        self.problem(key, f"expected one of {allowed}, got {text!r}")
        return None

    def boolean(self, name: str, default: bool) -> bool:
        value = self._raw(name)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self._wrong_type(self.key(name), "a boolean (true or false)", value)
            return default
        return value

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        value = self._raw(name)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self._wrong_type(self.key(name), "an integer", value)
            return default
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f"≥ {minimum}"
            self.problem(self.key(name), f"must be an integer {bound}, got {value}")
            return default
        return value

    def date(self, name: str) -> dt.date | None:
        value = self._raw(name)
        if value is _MISSING:
            return None
        # tomllib gives datetime (a date subclass) for date-times: refuse those.
        if isinstance(value, dt.datetime) or not isinstance(value, dt.date):
            self._wrong_type(self.key(name), "a date (YYYY-MM-DD, unquoted)", value)
            return None
        return value

    def strings(
        self, name: str, *, required: bool = False, nonempty: bool = False
    ) -> list[tuple[str, str]] | None:
        """(key path, value) per element of an array of strings; None when absent."""
        value = self._raw(name)
        if value is _MISSING:
            if required:
                self._missing(name)
            return None
        if not isinstance(value, list):
            self._wrong_type(self.key(name), "an array of strings", value)
            return []
        if nonempty and not value:
            self.problem(self.key(name), "must list at least one value")
        items: list[tuple[str, str]] = []
        for i, item in enumerate(value):
            key = f"{self.key(name)}[{i}]"
            if isinstance(item, str):
                items.append((key, item))
            else:
                self._wrong_type(key, "a string", item)
        return items

    def parsed_list(self, name: str, parse: Callable[[str], _T]) -> list[_T] | None:
        items = self.strings(name)
        if items is None:
            return None
        out: list[_T] = []
        for key, text in items:
            value = self.parse_value(key, text, parse)
            if value is not None:
                out.append(value)
        return out

    def table(self, name: str) -> _Table:
        value = self._raw(name)
        key = self.key(name)
        if value is _MISSING:
            return _Table(self._problems, self._file, {}, key)
        if not isinstance(value, dict):
            self._wrong_type(key, f"a table ([{key}])", value)
            return _Table(self._problems, self._file, {}, key)
        return _Table(self._problems, self._file, value, key)

    def tables(self, name: str) -> list[_Table]:
        value = self._raw(name)
        key = self.key(name)
        if value is _MISSING:
            return []
        if not isinstance(value, list):
            self._wrong_type(key, f"an array of tables ([[{key}]])", value)
            return []
        out: list[_Table] = []
        for i, item in enumerate(value):
            if isinstance(item, dict):
                out.append(_Table(self._problems, self._file, item, f"{key}[{i}]"))
            else:
                self._wrong_type(f"{key}[{i}]", "a table", item)
        return out

    def finish(self) -> None:
        """Report every key of this table that no reader asked for."""
        for name in self._data:
            if name not in self._used:
                self.problem(self.key(name), "unknown key")


# --------------------------------------------------------------------------- sections


def _resolve(base: Path, text: str) -> Path:
    # Absolute and normalised, but symlinks are NOT followed: certificates and CRLs
    # are often rotated by re-pointing a symlink, and a reload must see the new target.
    return Path(os.path.abspath(base / Path(text).expanduser()))


def _path_parser(base: Path) -> Callable[[str], Path]:
    def parse(text: str) -> Path:
        if not text:
            raise _Invalid("a path must not be empty")
        return _resolve(base, text)

    return parse


def _storage_url(base: Path) -> Callable[[str], str]:
    def parse(url: str) -> str:
        if url.startswith(POSTGRES_PREFIX):
            return url
        if not url.startswith(SQLITE_PREFIX):
            raise _Invalid(
                f"must start with {SQLITE_PREFIX!r} or {POSTGRES_PREFIX!r} (async drivers)"
            )
        rest = url[len(SQLITE_PREFIX) :]
        if not rest.startswith("/"):
            raise _Invalid(f"expected {SQLITE_PREFIX}/PATH (three slashes, then the path)")
        file_part, question, query = rest[1:].partition("?")
        if file_part in ("", ":memory:"):
            return url
        return f"{SQLITE_PREFIX}/{_resolve(base, file_part)}{question}{query}"

    return parse


@dataclass(slots=True)
class _Reading:
    """What the section readers share while one file is read."""

    root: _Table
    base: Path


def _read_server(r: _Reading) -> tuple[str, Path, list[str] | None, Path | None, Path | None]:
    t = r.root.table("server")
    hostname = t.parsed("hostname", _domain, required=True) or ""
    data_dir = t.parsed("data_dir", _path_parser(r.base)) or _resolve(r.base, "var")
    local_domains = t.parsed_list("local_domains", _domain)
    policy_dir = t.parsed("policy_dir", _path_parser(r.base))
    control_socket = t.parsed("control_socket", _path_parser(r.base))
    t.finish()
    return hostname, data_dir, local_domains, policy_dir, control_socket


def _read_storage(r: _Reading, data_dir: Path) -> StorageConfig:
    t = r.root.table("storage")
    url = t.parsed("url", _storage_url(r.base)) or f"{SQLITE_PREFIX}/{data_dir / 'relay.db'}"
    key_file = t.parsed("key_file", _path_parser(r.base)) or data_dir / "blob.key"
    schema = t.parsed("schema", _schema_name)
    if schema is not None and not url.startswith(POSTGRES_PREFIX):
        t.problem("schema", "only PostgreSQL has schemas; remove it for SQLite")
    audit_key_file = t.parsed("audit_key_file", _path_parser(r.base))
    anchors = t.parsed("audit_anchor_file", _path_parser(r.base))
    t.finish()
    return StorageConfig(
        url=url,
        key_file=key_file,
        schema=schema,
        audit_key_file=audit_key_file or key_file.with_name("audit.key"),
        audit_anchor_file=anchors or data_dir / "audit-anchors.jsonl",
    )


def _schema_name(text: str) -> str:
    # An unquoted PostgreSQL identifier: it is interpolated into CREATE SCHEMA.
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", text):
        raise _Invalid("a schema name is lower-case letters, digits and _ (at most 63)")
    return text


def _read_tls(r: _Reading) -> tuple[TlsConfig, _Table]:
    t = r.root.table("tls")
    path = _path_parser(r.base)
    tls = TlsConfig(
        certificate=t.parsed("certificate", path),
        key=t.parsed("key", path),
        trust_anchors=tuple(t.parsed_list("trust_anchors", path) or ()),
        crl_files=tuple(t.parsed_list("crl_files", path) or ()),
        minimum_version=t.parsed(
            "minimum_version", _pattern(re.compile(r"1\.[23]"), 'TLS "1.2" or "1.3"')
        )
        or "1.2",
        # 1 day: CRLs of IGC-Santé are published daily; past nextUpdate + grace we
        # fail closed (DESIGN.md, TLS).
        crl_grace_seconds=t.integer("crl_grace_seconds", 86400, minimum=0),
    )
    t.finish()
    return tls, t


def _read_listeners(r: _Reading, tls_table: _Table) -> list[ListenerConfig]:
    listeners: list[ListenerConfig] = []
    seen: dict[tuple[str, int], str] = {}
    for t in r.root.tables("listeners"):
        kind = t.choice("kind", ListenerKind, required=True)
        address = t.parsed("address", _listen_address, required=True)
        mode = t.choice("tls", TlsMode, required=True)
        inbound = kind is ListenerKind.INBOUND
        client_cert = t.boolean("require_client_certificate", inbound)
        endpoints = _read_endpoints(t, kind, address)
        t.finish()
        if kind is ListenerKind.HTTP and mode is TlsMode.STARTTLS:
            t.problem(
                t.key("tls"),
                'HTTP has no STARTTLS: use "implicit" (HTTPS) or "none" (loopback only, '
                "e.g. behind a reverse proxy)",
            )
        if inbound and not client_cert:
            t.problem(
                t.key("require_client_certificate"),
                "an inbound listener must require a client certificate "
                "(MSSanté operators authenticate each other by IGC-Santé certificates)",
            )
        if address is not None:
            host, port = address
            if mode is TlsMode.NONE and not ipaddress.ip_address(host).is_loopback:
                t.problem(
                    t.key("tls"),
                    '"none" (plain text) is only allowed on a loopback address '
                    "(127.0.0.0/8 or ::1), for local benchmarks",
                )
            if (host, port) in seen:
                t.problem(
                    t.key("address"),
                    f"duplicate listener address {host}:{port} (also {seen[(host, port)]})",
                )
            else:
                seen[(host, port)] = t.path
        if mode is not None and mode is not TlsMode.NONE:
            missing = [f"tls.{k}" for k in ("certificate", "key") if not tls_table.has(k)]
            if missing:
                t.problem(
                    t.key("tls"),
                    f'"{mode.value}" needs TLS material but {" and ".join(missing)} '
                    f"{'is' if len(missing) == 1 else 'are'} not set in [tls]",
                )
            if client_cert and not tls_table.has("trust_anchors"):
                t.problem(
                    t.key("require_client_certificate"),
                    "client certificates cannot be verified: tls.trust_anchors is not set",
                )
        host, port = address or ("", 0)
        listeners.append(
            ListenerConfig(
                kind=kind or ListenerKind.SUBMISSION,
                host=host,
                port=port,
                tls=mode or TlsMode.NONE,
                require_client_certificate=client_cert,
                endpoints=endpoints,
            )
        )
    return listeners


def _read_endpoints(
    t: _Table, kind: ListenerKind | None, address: tuple[str, int] | None
) -> frozenset[HttpEndpoint]:
    items = t.strings("endpoints", nonempty=True)
    if kind is not ListenerKind.HTTP:
        if items is not None:
            t.problem(t.key("endpoints"), 'only a kind = "http" listener has endpoints')
        return frozenset()
    if items is None:
        loopback = address is not None and ipaddress.ip_address(address[0]).is_loopback
        return frozenset(HttpEndpoint) if loopback else frozenset({HttpEndpoint.AUTOCONFIG})
    found = (t.choice_value(key, text, HttpEndpoint) for key, text in items)
    return frozenset(e for e in found if e is not None)


def _read_people(r: _Reading) -> list[Person]:
    people: list[Person] = []
    ids: dict[str, str] = {}
    logins: dict[str, str] = {}
    fingerprints: dict[str, str] = {}
    for t in r.root.tables("people"):
        pid = t.parsed("id", _person_id, required=True)
        display_name = t.string("display_name")
        rpps = t.parsed("rpps", _rpps)
        # An id or RPPS already reported as malformed still counts as present, so
        # references to it do not cascade into "unknown person" or "has no RPPS".
        pid = pid or t.raw_string("id")
        if rpps is None and t.has("rpps"):
            rpps = "<invalid>"
        profession = t.string("profession")
        login = t.parsed("login", _login)
        password_hash = t.parsed("password_hash", _password_hash)
        national_id = t.parsed("national_id", _national_id)
        methods = _read_auth_methods(t)
        prints: set[str] = set()
        for key, text in t.strings("certificate_fingerprints") or ():
            value = t.parse_value(key, text, _fingerprint)
            if value is None:
                continue
            if value in fingerprints:
                t.problem(key, f"certificate already given to {fingerprints[value]}")
            else:
                fingerprints[value] = t.path
                prints.add(value)
        t.finish()
        if pid is not None:
            if pid in ids:
                t.problem(t.key("id"), f'duplicate person id "{pid}" (also {ids[pid]})')
            else:
                ids[pid] = t.path
        login = login or pid
        if login is not None:
            if login in logins:
                t.problem(
                    t.key("login"),
                    f'duplicate login "{login}" (also {logins[login]}; '
                    "a login defaults to the person id)",
                )
            else:
                logins[login] = t.path
        people.append(
            Person(
                id=pid or "",
                display_name=display_name or pid or "",
                rpps=rpps,
                profession=profession,
                login=login or "",
                password_hash=password_hash,
                certificate_fingerprints=frozenset(prints),
                auth_methods=methods,
                national_id=national_id,
            )
        )
    return people


def _national_id(text: str) -> str:
    # Pro Santé Connect's national identifiers are short ASCII strings (RPPS-based:
    # "8" + 11 digits; others carry a structure id and a "/"): to be confirmed against
    # the issuer's documentation, so only the character set is checked.
    if not re.fullmatch(r"[A-Za-z0-9/._-]{1,64}", text):
        raise _Invalid("a national identifier is 1 to 64 letters, digits, '/', '.', '_' or '-'")
    return text


def _read_auth_methods(t: _Table) -> frozenset[AuthMethod]:
    """`auth.methods = ["password", "certificate", "token"]`; every method when absent."""
    a = t.table("auth")
    items = a.strings("methods", nonempty=True)
    a.finish()
    if items is None:
        return ALL_METHODS
    methods: set[AuthMethod] = set()
    for key, text in items:
        method = a.choice_value(key, text, AuthMethod)
        if method is None:
            continue
        if method in methods:
            a.problem(key, f'"{method.value}" is listed twice')
        methods.add(method)
    return frozenset(methods) or ALL_METHODS


def _read_coholders(t: _Table, known: dict[str, Person]) -> list[Coholder]:
    coholders: list[Coholder] = []
    listed: dict[str, str] = {}
    for c in t.tables("coholders"):
        person = c.string("person", required=True)
        rights: set[Right] = set()
        for key, text in c.strings("rights", required=True, nonempty=True) or ():
            right = c.choice_value(key, text, Right)
            if right is None:
                continue
            if right in rights:
                c.problem(key, f'"{right.value}" is listed twice')
            rights.add(right)
        valid_from = c.date("valid_from")
        valid_until = c.date("valid_until")
        c.finish()
        if person is not None:
            if person not in known:
                c.problem(c.key("person"), f'unknown person "{person}" (no [[people]] id)')
            if person in listed:
                c.problem(
                    c.key("person"),
                    f'"{person}" is already a co-holder of this box ({listed[person]}); '
                    "one entry per person",
                )
            else:
                listed[person] = c.path
        if valid_from is not None and valid_until is not None and valid_until < valid_from:
            c.problem(
                c.key("valid_until"),
                f"{valid_until.isoformat()} is before valid_from ({valid_from.isoformat()})",
            )
        coholders.append(
            Coholder(
                person=person or "",
                rights=frozenset(rights),
                valid_from=valid_from,
                valid_until=valid_until,
            )
        )
    return coholders


def _read_upstream(r: _Reading, box: _Table) -> UpstreamConfig | None:
    """``[mailboxes.upstream]``: the operator hosting the box (gateway mode)."""
    if not box.has("upstream"):
        return None
    t = box.table("upstream")
    path = _path_parser(r.base)
    imap = t.parsed("imap", _endpoint(_IMAP_SCHEMES, "imaps://imap.operator.fr:993"), required=True)
    submission = t.parsed(
        "submission", _endpoint(_SUBMISSION_SCHEMES, "smtp://smtp.operator.fr:587")
    )
    login = t.string("login", required=True)
    password_file = t.parsed("password_file", path)
    certificate = t.parsed("certificate", path)
    key = t.parsed("key", path)
    anchors = t.parsed_list("trust_anchors", path)
    crl_files = t.parsed_list("crl_files", path) or []
    folders = t.parsed_list("folders", _folder_name)
    poll = t.integer("poll_interval_seconds", 60, minimum=5, maximum=86400)
    idle = t.boolean("idle", True)
    t.finish()
    has = {name: t.has(name) for name in ("password_file", "certificate", "key")}
    if not any(has.values()):
        t.problem(
            t.key("password_file"),
            "the box needs a credential for the operator: password_file, or certificate and key",
        )
    elif has["password_file"] and (has["certificate"] or has["key"]):
        t.problem(
            t.key("certificate" if has["certificate"] else "key"),
            "give one credential: password_file, or certificate and key, not both",
        )
    elif has["certificate"] != has["key"]:
        missing = "key" if has["certificate"] else "certificate"
        t.problem(t.key(missing), "certificate and key go together (the box's client certificate)")
    if not t.has("trust_anchors"):
        t.problem(
            t.key("trust_anchors"),
            "required: the PEM files the operator's server certificate must chain to "
            "(IGC-Santé roots)",
        )
    elif not anchors:
        t.problem(t.key("trust_anchors"), "must list at least one file")
    if folders is not None and len(set(folders)) != len(folders):
        t.problem(t.key("folders"), "a folder is listed twice")
    if imap is None or login is None:
        return None
    return UpstreamConfig(
        imap=imap,
        submission=submission,
        login=login,
        password_file=password_file,
        certificate=certificate,
        key=key,
        trust_anchors=tuple(anchors or ()),
        crl_files=tuple(crl_files),
        folders=tuple(folders) if folders is not None else None,
        poll_interval_seconds=poll,
        idle=idle,
    )


def _read_mailboxes(r: _Reading, people: Sequence[Person]) -> list[tuple[Mailbox, _Table]]:
    known: dict[str, Person] = {}
    for p in people:
        known.setdefault(p.id, p)
    boxes: list[tuple[Mailbox, _Table]] = []
    addresses: dict[str, str] = {}
    for t in r.root.tables("mailboxes"):
        address = t.parsed("address", _addr_spec, required=True)
        box_type = t.choice("type", BoxType, required=True)
        owner = t.string("owner")
        structure_id = t.parsed("structure_id", _structure_id)
        responsible = t.string("responsible")
        liste_rouge = t.boolean("liste_rouge", False)
        seen = t.choice("seen", SeenMode, default=SeenMode.SHARED)
        pharmacy = t.boolean("pharmacy", False)
        methods = _read_auth_methods(t)
        coholders = _read_coholders(t, known)
        upstream = _read_upstream(r, t)
        t.finish()

        if address is not None:
            if address in addresses:
                t.problem(
                    t.key("address"),
                    f'duplicate mailbox address "{address}" (also {addresses[address]})',
                )
            else:
                addresses[address] = t.path
        for name, pid in (("owner", owner), ("responsible", responsible)):
            if pid is not None and pid not in known:
                t.problem(t.key(name), f'unknown person "{pid}" (no [[people]] id)')
        if box_type is BoxType.PER and owner is None:
            t.problem(t.key("owner"), "a PER box needs an owner: the professional it belongs to")
        if box_type in (BoxType.ORG, BoxType.CAB):
            why = (
                "an ORG/CAB box is created under the responsibility of an authorised "
                "professional (MSSANTE.md)"
            )
            if responsible is None:
                t.problem(t.key("responsible"), f"required for a {box_type} box: {why}")
            elif responsible in known and known[responsible].rpps is None:
                t.problem(
                    t.key("responsible"),
                    f'the responsible person "{responsible}" has no RPPS: {why}',
                )
            if owner is None and structure_id is None:
                t.problem(
                    t.key("owner"),
                    f"a {box_type} box needs an owner or a structure_id (FINESS or SIRET)",
                )
        if box_type is BoxType.APP and AuthMethod.CERTIFICATE not in methods:
            t.problem(
                t.key("auth.methods"),
                "an APP box is used by practice software, which logs in with its client "
                'certificate: keep "certificate" in its methods',
            )
        if pharmacy and box_type not in (BoxType.ORG, BoxType.CAB, None):
            t.problem(
                t.key("pharmacy"),
                "only an ORG or CAB box can be a pharmacy's (patients may write first to it)",
            )
        boxes.append(
            (
                Mailbox(
                    address=address or "",
                    type=box_type or BoxType.ORG,
                    owner=owner,
                    structure_id=structure_id,
                    responsible=responsible,
                    liste_rouge=liste_rouge,
                    seen=seen or SeenMode.SHARED,
                    pharmacy=pharmacy,
                    coholders=tuple(coholders),
                    upstream=upstream,
                    auth_methods=methods,
                ),
                t,
            )
        )
    return boxes


def _read_routes(r: _Reading) -> list[Route]:
    routes: list[Route] = []
    domains: dict[str, str] = {}
    for t in r.root.tables("routes"):
        domain = t.parsed("domain", _route_domain, required=True)
        mx = t.boolean("mx", False)
        host = t.parsed("host", _domain, required=not mx)
        # 25: RFC 5321 §4.5.4 / the SMTP relay port between operators.
        port = t.integer("port", 25, minimum=1, maximum=65535)
        peer_dn = t.parsed("peer_dn", _peer_dn)
        t.finish()
        if domain is not None:
            if domain in domains:
                t.problem(
                    t.key("domain"), f'duplicate route for "{domain}" (also {domains[domain]})'
                )
            else:
                domains[domain] = t.path
        routes.append(
            Route(domain=domain or "", host=host or "", port=port, peer_dn=peer_dn, mx=mx)
        )
    return routes


def _read_limits(r: _Reading) -> Limits:
    t = r.root.table("limits")
    values: dict[str, int] = {}
    for f in dataclasses.fields(Limits):
        default = f.default
        assert isinstance(default, int)
        values[f.name] = t.integer(f.name, default, minimum=1)
    t.finish()
    return Limits(**values)


# Signature algorithms an issuer's JWKS can verify (RFC 7518 §3.3-3.5, RFC 8037).
# "none" (RFC 7518 §3.6) and HMAC (HS*: a shared secret, RFC 7518 §3.2) are refused:
# with public keys from a JWKS, HMAC is the "key confusion" attack.
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
DEFAULT_ALGORITHMS = ("RS256", "PS256", "ES256")
# eIDAS assurance levels, weakest first (low, substantial, high): what Pro Santé
# Connect is understood to put in `acr`; to be confirmed against its documentation.
DEFAULT_ACR_LEVELS = ("eidas1", "eidas2", "eidas3")
MAX_CLOCK_SKEW_SECONDS = 300  # RFC 7519 §4.1.4: "no more than a few minutes"


def _https_url(text: str) -> str:
    if not re.fullmatch(r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[!-~]*)?", text):
        raise _Invalid("must be an https:// URL")
    return text


def _algorithm(text: str) -> str:
    if text.lower() == "none":
        raise _Invalid('"none" means an unsigned token: never allowed')
    if text.upper().startswith("HS"):
        raise _Invalid(
            f'"{text}" is HMAC with a shared secret: refused, the issuer\'s keys are '
            "public keys (the HMAC key-confusion attack)"
        )
    if text not in ASYMMETRIC_ALGORITHMS:
        raise _Invalid(f"expected one of {', '.join(ASYMMETRIC_ALGORITHMS)}, got {text!r}")
    return text


def _claim_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_:.-]{1,64}", text):
        raise _Invalid("a claim name is 1 to 64 letters, digits, '_', ':', '.' or '-'")
    return text


def _read_issuer(r: _Reading) -> IssuerConfig | None:
    if not r.root.has("issuer"):
        return None
    t = r.root.table("issuer")
    path = _path_parser(r.base)
    issuer = t.parsed("issuer", _https_url, required=True) or ""
    client_id = t.string("client_id", required=True) or ""
    default_discovery = issuer.rstrip("/") + "/.well-known/openid-configuration"
    discovery_url = t.parsed("discovery_url", _https_url) or default_discovery
    jwks_file = t.parsed("jwks_file", path)
    ca_file = t.parsed("ca_file", path)
    algorithms = t.parsed_list("algorithms", _algorithm)
    if algorithms is not None and not algorithms and t.has("algorithms"):
        t.problem(t.key("algorithms"), "must list at least one algorithm")
    identifier_claim = t.parsed("identifier_claim", _claim_name) or "preferred_username"
    rpps_prefix = t.string("rpps_prefix")
    levels = [text for _, text in t.strings("acr_levels", nonempty=True) or ()]
    acr_levels = tuple(levels) or DEFAULT_ACR_LEVELS
    minimum_acr = t.string("minimum_acr")
    if minimum_acr is not None and minimum_acr not in acr_levels:
        t.problem(
            t.key("minimum_acr"),
            f"{minimum_acr!r} is not in acr_levels ({', '.join(acr_levels)})",
        )
    scope = t.string("scope") or "openid"
    skew = t.integer("clock_skew_seconds", 60, minimum=0, maximum=MAX_CLOCK_SKEW_SECONDS)
    max_age = t.integer("jwks_max_age_seconds", 3600, minimum=60, maximum=7 * 86400)
    min_refetch = t.integer("jwks_min_refetch_seconds", 60, minimum=1, maximum=3600)
    timeout = t.integer("http_timeout_seconds", 10, minimum=1, maximum=120)
    introspection_url = t.parsed("introspection_url", _https_url)
    secret_file = t.parsed("client_secret_file", path)
    dev_key = t.parsed("dev_signing_key", path)
    t.finish()
    if introspection_url is not None and secret_file is None:
        t.problem(
            t.key("client_secret_file"),
            "introspection_url needs the client's secret (RFC 7662 §2.1: the caller "
            "authenticates to the issuer)",
        )
    return IssuerConfig(
        issuer=issuer,
        client_id=client_id,
        discovery_url=discovery_url,
        jwks_file=jwks_file,
        ca_file=ca_file,
        algorithms=tuple(dict.fromkeys(algorithms or DEFAULT_ALGORITHMS)),
        identifier_claim=identifier_claim,
        rpps_prefix=rpps_prefix if rpps_prefix is not None else "8",
        acr_levels=acr_levels,
        minimum_acr=minimum_acr,
        scope=scope,
        clock_skew_seconds=skew,
        jwks_max_age_seconds=max_age,
        jwks_min_refetch_seconds=min_refetch,
        http_timeout_seconds=timeout,
        introspection_url=introspection_url,
        client_secret_file=secret_file,
        dev_signing_key=dev_key,
    )


def _check_token_identities(
    r: _Reading, issuer: IssuerConfig | None, people: Sequence[Person]
) -> None:
    """Who needs tokens has an issuer; no two people answer to one token identifier."""
    tables = r.root.tables("people") if r.root.has("people") else []
    seen: dict[str, str] = {}
    for person, t in zip(people, tables, strict=False):
        if person.auth_methods == frozenset({AuthMethod.TOKEN}) and issuer is None:
            t.problem(
                t.key("auth.methods"),
                'only "token" is allowed but no [issuer] is configured: this person '
                "could not log in",
            )
        if issuer is None:
            continue
        ids = [person.national_id] if person.national_id else []
        if person.rpps and person.rpps != "<invalid>":
            ids.append(issuer.rpps_prefix + person.rpps)
        for value in ids:
            if value in seen and seen[value] != person.id:
                t.problem(
                    t.key("national_id"),
                    f'token identifier "{value}" also names "{seen[value]}"',
                )
            seen[value] = person.id


_SECTIONS = (
    "server",
    "storage",
    "tls",
    "listeners",
    "people",
    "mailboxes",
    "routes",
    "limits",
    "issuer",
)


def load_text(text: str, path: Path) -> Config:
    """Parse `text`, the content of the config file at `path`; raise `ConfigError`.

    `path` names the file in problems and anchors relative paths (its folder).
    """
    file = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        key, message = describe_syntax_error(text, exc)
        raise ConfigError([Problem(file, key, message)]) from None
    problems: list[Problem] = []
    r = _Reading(root=_Table(problems, file, data, ""), base=Path(os.path.abspath(path)).parent)

    hostname, data_dir, local_domains, policy_dir, control_socket = _read_server(r)
    storage = _read_storage(r, data_dir)
    tls, tls_table = _read_tls(r)
    listeners = _read_listeners(r, tls_table)
    people = _read_people(r)
    boxes = _read_mailboxes(r, people)
    routes = _read_routes(r)
    limits = _read_limits(r)
    issuer = _read_issuer(r)
    _check_token_identities(r, issuer, people)
    r.root.finish()

    # A box hosted at an operator (gateway mode) does not make its domain ours: mail to
    # the operator's other addresses goes out, and mail to the box goes through the
    # operator, where it lives.
    box_domains = {
        m.address.rpartition("@")[2] for m, _ in boxes if m.address and m.upstream is None
    }
    if local_domains is None:
        domains = frozenset(box_domains)
    else:
        domains = frozenset(local_domains)
        for box, t in boxes:
            domain = box.address.rpartition("@")[2]
            if box.address and box.upstream is None and domain not in domains:
                t.problem(t.key("address"), f'domain "{domain}" is not in server.local_domains')

    if problems:
        raise ConfigError(problems)
    return Config(
        path=path,
        server=ServerConfig(
            hostname=hostname,
            data_dir=data_dir,
            local_domains=domains,
            policy_dir=policy_dir,
            control_socket=control_socket,
        ),
        storage=storage,
        tls=tls,
        listeners=tuple(listeners),
        people=tuple(people),
        mailboxes=tuple(m for m, _ in boxes),
        routes=tuple(routes),
        limits=limits,
        issuer=issuer,
    )


def load(path: Path) -> Config:
    """Read and parse the config file at `path`; raise `ConfigError` listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError([Problem(str(path), "<file>", "not valid UTF-8")]) from None
    except OSError as exc:
        raise ConfigError(
            [Problem(str(path), "<file>", f"cannot read: {exc.strerror or exc}")]
        ) from None
    return load_text(text, path)


def check_files(config: Config) -> list[Problem]:
    """Files the config names that are missing or unreadable, and credentials that
    others could read.

    `serve` refuses a config with any of these (`relay.app.load_for_serving`), and so
    does `check-config`, which runs the same checks.
    """
    tls = config.tls
    named: list[tuple[str, Path]] = []
    if tls.certificate is not None:
        named.append(("tls.certificate", tls.certificate))
    if tls.key is not None:
        named.append(("tls.key", tls.key))
    named += [(f"tls.trust_anchors[{i}]", p) for i, p in enumerate(tls.trust_anchors)]
    named += [(f"tls.crl_files[{i}]", p) for i, p in enumerate(tls.crl_files)]
    secrets: list[tuple[str, Path]] = []
    for i, box in enumerate(config.mailboxes):
        up = box.upstream
        if up is None:
            continue
        where = f"mailboxes[{i}].upstream"
        for name, value in (("password_file", up.password_file), ("key", up.key)):
            if value is not None:
                secrets.append((f"{where}.{name}", value))
        if up.certificate is not None:
            named.append((f"{where}.certificate", up.certificate))
        named += [(f"{where}.trust_anchors[{j}]", p) for j, p in enumerate(up.trust_anchors)]
        named += [(f"{where}.crl_files[{j}]", p) for j, p in enumerate(up.crl_files)]
    if config.issuer is not None:
        for key in ("jwks_file", "ca_file"):
            value = getattr(config.issuer, key)
            if value is not None:
                named.append((f"issuer.{key}", value))
        if config.issuer.client_secret_file is not None:
            secrets.append(("issuer.client_secret_file", config.issuer.client_secret_file))
    found: list[Problem] = []
    # The store's key files may be missing (the first start of an empty store creates
    # them, relay.store.keys), but one that is there must be a readable file.
    storage = config.storage
    for key, path in (
        ("storage.key_file", storage.key_file),
        ("storage.audit_key_file", storage.audit_key_path),
    ):
        if path.exists() and not path.is_file():
            found.append(Problem(str(config.path), key, f"not a regular file: {path}"))
        elif path.exists() and not os.access(path, os.R_OK):
            found.append(Problem(str(config.path), key, f"not readable: {path}"))
    for key, path in named + secrets:
        if not path.exists():
            found.append(Problem(str(config.path), key, f"file not found: {path}"))
        elif not path.is_file():
            found.append(Problem(str(config.path), key, f"not a regular file: {path}"))
        elif not os.access(path, os.R_OK):
            found.append(Problem(str(config.path), key, f"not readable: {path}"))
        elif (key, path) in secrets and path.stat().st_mode & 0o077:
            # The box's credential for its operator (whoever reads it acts as the
            # whole team there, untraced), the issuer's client secret: only the
            # daemon's user may read them.
            mode = path.stat().st_mode & 0o777
            found.append(
                Problem(
                    str(config.path),
                    key,
                    f"{path} is readable by other users (mode {mode:04o}): "
                    f"chmod 600 it, owned by the daemon's user",
                )
            )
    return found
