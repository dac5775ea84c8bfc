"""The configuration as frozen values.

One TOML file is parsed once (`relay.config.load`) into these dataclasses. Every path
is already resolved against the config file's folder; every limit carries its unit in
its name. Components receive the part they need, never the whole file.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from pathlib import Path


class ListenerKind(enum.StrEnum):
    SUBMISSION = "submission"
    INBOUND = "inbound"
    IMAP = "imap"
    HTTP = "http"  # metrics, health, client autoconfiguration (relay.web)


class TlsMode(enum.StrEnum):
    STARTTLS = "starttls"
    IMPLICIT = "implicit"
    # Plain text is only accepted on a loopback address (benchmarks, local tests);
    # the loader refuses it anywhere else.
    NONE = "none"


class HttpEndpoint(enum.StrEnum):
    """What an HTTP listener serves (relay.web)."""

    METRICS = "metrics"  # /metrics, Prometheus text format
    HEALTH = "health"  # /healthz
    AUTOCONFIG = "autoconfig"  # Thunderbird autoconfig, Microsoft Autodiscover (POX)


class BoxType(enum.StrEnum):
    """MSSanté mailbox types (MSSANTE.md)."""

    PER = "PER"
    ORG = "ORG"
    APP = "APP"
    CAB = "CAB"


class SeenMode(enum.StrEnum):
    SHARED = "shared"
    PER_PERSON = "per-person"


class Right(enum.StrEnum):
    """Rights a co-holder may hold on a box; mapped to RFC 4314 letters by IMAP."""

    READ = "read"
    FLAG = "flag"
    DELETE = "delete"
    SEND = "send"
    MANAGE = "manage"


ALL_RIGHTS: frozenset[Right] = frozenset(Right)


class AuthMethod(enum.StrEnum):
    """How a person proved who they are (`auth.methods` of a person or a box)."""

    PASSWORD = "password"  # noqa: S105 (a method name) PLAIN, LOGIN
    CERTIFICATE = "certificate"  # EXTERNAL with a TLS client certificate (CPS card)
    TOKEN = "token"  # noqa: S105 (a method name) OAUTHBEARER, XOAUTH2 with the issuer's access token


ALL_METHODS: frozenset[AuthMethod] = frozenset(AuthMethod)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    hostname: str
    data_dir: Path
    # Domains for which this server holds boxes. Defaults to the domains of the
    # configured mailboxes.
    local_domains: frozenset[str]
    # Folder of the policy files (mssante.toml, patient.toml); None: built-in defaults.
    policy_dir: Path | None = None
    # The control socket (`mss-relay reload`, `status`, `who`, `kick`). None: the
    # default, `relay.control.paths.control_socket_path` ($RUNTIME_DIRECTORY, else
    # data_dir).
    control_socket: Path | None = None


@dataclass(frozen=True, slots=True)
class StorageConfig:
    url: str  # SQLAlchemy async URL: sqlite+aiosqlite:///... or postgresql+asyncpg://...
    # AES-256-GCM key for message bodies (relay.store.keys: created 0600 by `key init`
    # or the first start of an empty store, never by any other command)
    key_file: Path
    # PostgreSQL only: the schema to use (several installations or test runs in one
    # database). None: the server's default search_path.
    schema: str | None = None
    # HMAC-SHA256 key of the audit chain, created with the blob key. None: "audit.key"
    # in the key file's folder.
    audit_key_file: Path | None = None
    # Append-only file the audit head is anchored to (relay.audit.anchors). None:
    # "audit-anchors.jsonl" in the key file's folder (the loader gives data_dir).
    audit_anchor_file: Path | None = None

    @property
    def audit_key_path(self) -> Path:
        return self.audit_key_file or self.key_file.with_name("audit.key")

    @property
    def audit_anchor_path(self) -> Path:
        return self.audit_anchor_file or self.key_file.with_name("audit-anchors.jsonl")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    certificate: Path | None
    key: Path | None
    trust_anchors: tuple[Path, ...]  # PEM files: roots and intermediates of IGC-Santé
    crl_files: tuple[Path, ...]
    minimum_version: str  # "1.2" or "1.3"
    crl_grace_seconds: int  # how long past nextUpdate a CRL is still honoured


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    kind: ListenerKind
    host: str
    port: int
    tls: TlsMode
    require_client_certificate: bool  # inbound: always True; submission/imap: optional
    # kind = "http" only: what it serves. Default: everything on a loopback address,
    # autoconfig only elsewhere (metrics and health say how busy the server is).
    endpoints: frozenset[HttpEndpoint] = frozenset()


@dataclass(frozen=True, slots=True)
class Person:
    id: str
    display_name: str
    rpps: str | None  # 11 digits
    profession: str | None
    login: str
    password_hash: str | None  # argon2id PHC string
    certificate_fingerprints: frozenset[str]  # lower-case hex SHA-256 of the DER cert
    # How this person may log in (`auth.methods`); every method unless restricted.
    auth_methods: frozenset[AuthMethod] = ALL_METHODS
    # The identifier the token issuer names this person by, when it is not the one
    # derived from the RPPS (`IssuerConfig.rpps_prefix` + rpps).
    national_id: str | None = None


@dataclass(frozen=True, slots=True)
class Coholder:
    person: str  # Person.id
    rights: frozenset[Right]
    valid_from: dt.date | None
    valid_until: dt.date | None  # inclusive

    def active_on(self, day: dt.date) -> bool:
        if self.valid_from is not None and day < self.valid_from:
            return False
        return not (self.valid_until is not None and day > self.valid_until)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A server the daemon connects to, always over TLS (implicit or STARTTLS)."""

    host: str
    port: int
    tls: TlsMode  # IMPLICIT or STARTTLS; never NONE (the loader refuses it)

    def url(self, implicit: str, starttls: str) -> str:
        scheme = implicit if self.tls is TlsMode.IMPLICIT else starttls
        return f"{scheme}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """Gateway mode: the box is hosted at an MSSanté operator (`relay.upstream`).

    mss-relay alone holds the box's credential for the operator: a password file
    (read at each connection, so it can be rotated without a reload) or a client
    certificate and key. The operator's server certificate must chain to
    `trust_anchors` and match the host name.
    """

    imap: Endpoint
    submission: Endpoint | None  # None: nobody may send as the box (read-only mirror)
    login: str
    password_file: Path | None
    certificate: Path | None
    key: Path | None
    trust_anchors: tuple[Path, ...]
    crl_files: tuple[Path, ...]
    # Local folder names ("/" separated) to mirror; None: every folder of the box.
    # INBOX is always mirrored.
    folders: tuple[str, ...] | None
    # How often the folders other than INBOX are compared (INBOX: IDLE, RFC 2177).
    poll_interval_seconds: int = 60
    idle: bool = True  # use IDLE on INBOX when the operator offers it

    def tls_config(self, minimum_version: str) -> TlsConfig:
        """What `relay.tls.context.client_context` needs to reach the operator."""
        return TlsConfig(
            certificate=self.certificate,
            key=self.key,
            trust_anchors=self.trust_anchors,
            crl_files=self.crl_files,
            minimum_version=minimum_version,
            crl_grace_seconds=0,
        )

    def mirrors(self, folder: str) -> bool:
        """Whether the local folder `folder` is mirrored (INBOX always is)."""
        if self.folders is None or folder == "INBOX":
            return True
        return any(folder == f or folder.startswith(f + "/") for f in self.folders)


@dataclass(frozen=True, slots=True)
class Mailbox:
    address: str  # lower-cased
    type: BoxType
    owner: str | None  # Person.id of the owner (all rights); None for structure-owned boxes
    structure_id: str | None  # FINESS (9 digits) or SIRET (14 digits)
    responsible: str | None  # Person.id; required with an RPPS for ORG and CAB
    liste_rouge: bool
    seen: SeenMode
    pharmacy: bool  # patient may write first (MSSANTE.md, patient messaging)
    coholders: tuple[Coholder, ...]
    # Gateway mode: the box lives at an MSSanté operator; mss-relay mirrors it.
    upstream: UpstreamConfig | None = None
    # How its co-holders must have logged in to reach it (`auth.methods`).
    auth_methods: frozenset[AuthMethod] = ALL_METHODS

    def rights_of(self, person_id: str, day: dt.date) -> frozenset[Right]:
        """Rights `person_id` holds on this box on `day` (empty if none)."""
        if self.owner == person_id:
            return ALL_RIGHTS
        rights: set[Right] = set()
        for c in self.coholders:
            if c.person == person_id and c.active_on(day):
                rights |= c.rights
        return frozenset(rights)


@dataclass(frozen=True, slots=True)
class Route:
    domain: str  # exact ("cpts-b.mssante.fr") or wildcard ("*.mssante.fr")
    host: str
    port: int
    peer_dn: str | None  # expected subject DN of the peer certificate (RFC 4514 string)
    mx: bool  # resolve MX records for the recipient domain instead of `host`


@dataclass(frozen=True, slots=True)
class Limits:
    # 25 MB: what Mon espace santé accepts (MSSANTE.md); also our SMTP SIZE.
    max_message_bytes: int = 25 * 1024 * 1024
    max_recipients: int = 100  # RFC 5321 §4.5.3.1.8 minimum buffer is 100
    max_line_bytes: int = 1000  # RFC 5321 §4.5.3.1.6 text line incl. CRLF = 1000
    smtp_command_timeout_seconds: int = 300  # RFC 5321 §4.5.3.2.7 server timeout 5 min
    # Submission: from connecting, a client has this long in all to authenticate; then
    # 421 4.7.0 and the connection is closed (the idle timer above is reset by every
    # command: NOOP every few minutes would otherwise hold a connection for hours).
    smtp_login_timeout_seconds: int = 60
    # Connections each listener (SMTP and IMAP) serves at once, in total and from one
    # client address; one more is refused (`421 4.7.0` on SMTP, `* BYE` on IMAP) and
    # closed. 100 per address leaves room for a practice behind one NAT address.
    max_connections_per_listener: int = 1000
    max_connections_per_ip: int = 100
    imap_idle_timeout_seconds: int = 1800  # RFC 3501 §5.4: at least 30 minutes
    imap_max_literal_bytes: int = 25 * 1024 * 1024
    # RFC 7162 §4 asks for at least 8192 octets; an RFC 2971 §3.3 ID of 30 fields with
    # 1024-octet values is a 32 KiB line, and Dovecot accepts 64 KiB (imap_max_line_length).
    imap_max_line_bytes: int = 65536
    # Before login a client has this long in total, counted from the connection, to
    # authenticate (not reset by input: a byte a second no longer keeps it open).
    # RFC 3501 §5.4 only bounds the autologout timer after login (at least 30 min,
    # imap_idle_timeout_seconds, reset by each complete command).
    imap_login_timeout_seconds: int = 60
    # Refused IMAP operations (NO [NOPERM]) recorded in the audit trail, per session
    # and per minute; the rest are counted and the count recorded (a looping client
    # must not flood the trail).
    imap_refusals_audited_per_minute: int = 20
    # Folder names a client creates: bytes of the name inside its box (modified UTF-7,
    # as stored; the column holds 512) and levels of hierarchy.
    imap_max_folder_name_bytes: int = 255
    imap_max_folder_depth: int = 16
    # Throttling (relay.identity.throttle): failures of one login from one address before
    # that login is refused from that address; failures from one address, any logins,
    # before the address is refused; how long both last (and the window they count in).
    # Failures of a login from anywhere only slow the answers down: the right password
    # from an address that has not failed is never refused.
    auth_failures_before_lockout: int = 5
    auth_address_failures_before_lockout: int = 20
    auth_lockout_seconds: int = 300
    max_bad_commands: int = 10
    # outbound queue (Postfix style defaults)
    retry_first_seconds: int = 300
    retry_max_interval_seconds: int = 3600
    retry_give_up_seconds: int = 5 * 24 * 3600
    delay_warning_seconds: int = 4 * 3600
    # outbound delivery (relay.delivery): Postfix-like defaults
    delivery_concurrency: int = 4  # simultaneous outbound connections (smtp process limit)
    delivery_messages_per_connection: int = 100  # then QUIT and reconnect; 1 = no reuse
    delivery_batch_recipients: int = 200  # queue rows claimed per round
    delivery_connect_timeout_seconds: int = 30  # Postfix smtp_connect_timeout
    # RFC 5321 §4.5.3.2: 5 min for the greeting, MAIL, RCPT (10 min for the final dot:
    # twice this is used there)
    delivery_command_timeout_seconds: int = 300
    # A claimed row is left alone by other nodes this long; a node that died mid-delivery
    # has its rows retried after it (at-least-once). Must exceed a whole connection's work.
    delivery_lease_seconds: int = 1800
    queue_poll_seconds: int = 1  # how often an idle worker looks for due rows
    # CRL refresh (relay.delivery.crl): IGC-Santé publishes CRLs daily
    # message key rotation (relay.store.rotation): how often a node looks for a new key,
    # blobs re-encrypted per transaction and the pause between two (the disk stays
    # available to mail), and how long after a rotation the retired key is kept at
    # least (every node must have taken the new key by then)
    key_poll_seconds: int = 2
    key_reencrypt_batch_blobs: int = 16
    key_reencrypt_pause_ms: int = 10
    key_switch_grace_seconds: int = 30
    crl_refresh_interval_seconds: int = 3600
    crl_fetch_timeout_seconds: int = 10
    # The audit head is anchored outside the database this often, and at start and
    # stop (relay.audit.anchors): rows since the newest anchor are what a key holder
    # with database access could still rewrite unnoticed.
    audit_anchor_interval_seconds: int = 300


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    """The OpenID Connect issuer whose access tokens log people in (OAUTHBEARER,
    XOAUTH2): Pro Santé Connect in production. See `relay.identity.tokens`."""

    issuer: str  # the exact `iss` value, an https URL
    client_id: str  # `aud` (or `azp`) must name it: the client registered at the issuer
    discovery_url: str  # OpenID Connect Discovery 1.0 §4: issuer + /.well-known/...
    jwks_file: Path | None  # keys read from this file: no discovery, no outbound HTTP
    ca_file: Path | None  # trust for HTTPS to the issuer; None: the system's CAs
    algorithms: tuple[str, ...]  # signature allow-list (asymmetric only)
    identifier_claim: str  # the claim naming the person
    rpps_prefix: str  # national identifier = prefix + RPPS
    acr_levels: tuple[str, ...]  # known `acr` values, weakest first
    minimum_acr: str | None  # None: `acr` is not checked
    scope: str  # the scope a client should ask for (RFC 7628 §3.2.2 error)
    clock_skew_seconds: int = 60  # leeway on exp/nbf/iat (RFC 7519 §4.1.4: "a few minutes")
    jwks_max_age_seconds: int = 3600  # keys are fetched again after this long
    jwks_min_refetch_seconds: int = 60  # an unknown kid refetches at most this often
    http_timeout_seconds: int = 10
    # RFC 7662 introspection for opaque (non-JWT) tokens; None: opaque tokens refused.
    introspection_url: str | None = None
    client_secret_file: Path | None = None  # HTTP Basic secret for introspection
    # DEMO/TEST ONLY: the private JWK `mss-relay dev-token` signs with. The daemon never
    # reads it.
    dev_signing_key: Path | None = None


@dataclass(frozen=True, slots=True)
class Config:
    path: Path  # the file this was loaded from
    server: ServerConfig
    storage: StorageConfig
    tls: TlsConfig
    listeners: tuple[ListenerConfig, ...]
    people: tuple[Person, ...]
    mailboxes: tuple[Mailbox, ...]
    routes: tuple[Route, ...]
    limits: Limits = field(default_factory=Limits)
    issuer: IssuerConfig | None = None  # None: OAUTHBEARER/XOAUTH2 not offered

    def person(self, person_id: str) -> Person | None:
        for p in self.people:
            if p.id == person_id:
                return p
        return None

    def person_by_login(self, login: str) -> Person | None:
        for p in self.people:
            if p.login == login:
                return p
        return None

    def mailbox(self, address: str) -> Mailbox | None:
        address = address.lower()
        for m in self.mailboxes:
            if m.address == address:
                return m
        return None

    def upstream_boxes(self) -> tuple[Mailbox, ...]:
        """The boxes hosted at an operator (gateway mode)."""
        return tuple(m for m in self.mailboxes if m.upstream is not None)
