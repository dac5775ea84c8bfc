"""The audit event schema: one frozen dataclass per kind of action.

Every event names who acted (`person`, the authenticated professional, never just the
box), the box acted on, the peer address, and what was asked and answered. Events never
carry message content: only identifiers (UIDs, Message-IDs), addresses and reply codes.
MSSANTE.md, "Traceability": per mailbox, the person, the time, the action, the request
and the server's answer, failures included.

The database row and the JSON line are both made from `to_record()`, so the schema is
defined here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

_REGISTRY: dict[str, type[AuditEvent]] = {}
_DETAIL_NAMES: dict[type[AuditEvent], tuple[str, ...]] = {}  # per class, in field order


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    """Fields every event has. Subclasses add their own typed fields."""

    ACTION: ClassVar[str] = "event"

    person: str | None = None
    box: str | None = None
    peer: str | None = None
    request: str | None = None
    answer: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        action = cls.__dict__.get("ACTION")
        if action is not None:
            if action in _REGISTRY:
                raise TypeError(f"duplicate audit action {action!r}")
            _REGISTRY[action] = cls

    def details(self) -> dict[str, Any]:
        """The event's own fields (those beyond the common ones), JSON-ready."""
        names = _DETAIL_NAMES.get(type(self))
        if names is None:
            # Once per class (two events a message, each read twice: row and log line).
            common = {f.name for f in dataclasses.fields(AuditEvent)}
            names = tuple(f.name for f in dataclasses.fields(self) if f.name not in common)
            _DETAIL_NAMES[type(self)] = names
        out: dict[str, Any] = {}
        for name in names:
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple | frozenset) else value
        return out

    def to_record(self) -> dict[str, Any]:
        return {
            "action": self.ACTION,
            "person": self.person,
            "box": self.box,
            "peer": self.peer,
            "request": self.request,
            "answer": self.answer,
            "details": self.details(),
        }


def action_names() -> list[str]:
    return sorted(_REGISTRY)


# --- daemon lifecycle and configuration -------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DaemonStarted(AuditEvent):
    ACTION: ClassVar[str] = "daemon.started"
    version: str
    config_file: str


@dataclass(frozen=True, kw_only=True)
class DaemonStopped(AuditEvent):
    ACTION: ClassVar[str] = "daemon.stopped"
    reason: str


@dataclass(frozen=True, kw_only=True)
class ConfigReloaded(AuditEvent):
    ACTION: ClassVar[str] = "config.reloaded"
    config_file: str
    changes: int


@dataclass(frozen=True, kw_only=True)
class ConfigReloadRefused(AuditEvent):
    ACTION: ClassVar[str] = "config.reload_refused"
    config_file: str
    problems: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class ConfigChanged(AuditEvent):
    """One difference between the old and the new config (box, co-holder, rights...)."""

    ACTION: ClassVar[str] = "config.changed"
    kind: str
    detail: str


# --- authentication ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AuthSucceeded(AuditEvent):
    ACTION: ClassVar[str] = "auth.succeeded"
    protocol: str  # smtp | imap
    mechanism: str
    login: str


@dataclass(frozen=True, kw_only=True)
class AuthFailed(AuditEvent):
    ACTION: ClassVar[str] = "auth.failed"
    protocol: str
    mechanism: str
    login: str | None
    reason: str


# --- message flow -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MessageAccepted(AuditEvent):
    """A message was committed to the store (SMTP acceptance or IMAP APPEND)."""

    ACTION: ClassVar[str] = "message.accepted"
    protocol: str
    message_id: str | None
    sender: str
    recipients: tuple[str, ...]
    size_bytes: int
    queue_id: str
    certificate_subject: str | None = None  # inbound: the peer operator's certificate


@dataclass(frozen=True, kw_only=True)
class MessageRefused(AuditEvent):
    """A peer or client was refused at some SMTP stage."""

    ACTION: ClassVar[str] = "message.refused"
    protocol: str
    stage: str  # connect | tls | mail | rcpt | data
    reason: str
    sender: str | None = None
    recipient: str | None = None
    certificate_subject: str | None = None
    rule: str | None = None


# --- audit trail about itself ---------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AuditExported(AuditEvent):
    ACTION: ClassVar[str] = "audit.exported"
    rows: int
    encrypted_to: str | None
    filters: str


@dataclass(frozen=True, kw_only=True)
class KeyCreated(AuditEvent):
    """A key file was created (`mss-relay key init`, or the first start of a new store)."""

    ACTION: ClassVar[str] = "store.key_created"
    key_file: str
    key_id: str = ""
    kind: str = "blob"  # blob | audit


@dataclass(frozen=True, kw_only=True)
class KeyRotated(AuditEvent):
    """`mss-relay key rotate`: a new message key seals from now on; the old one is kept
    read-only (retired) until every blob it sealed is re-encrypted."""

    ACTION: ClassVar[str] = "store.key_rotated"
    old_key_id: str
    new_key_id: str
    blobs: int  # sealed with the old key at the moment of rotation
    operator: str  # the OS user who ran the command


@dataclass(frozen=True, kw_only=True)
class KeyReloaded(AuditEvent):
    """A running node took the new message key: it seals new messages with it."""

    ACTION: ClassVar[str] = "store.key_reloaded"
    key_id: str
    node: str


@dataclass(frozen=True, kw_only=True)
class KeyReencrypted(AuditEvent):
    """Every blob a retired message key sealed is re-encrypted with the active key; the
    retired key is unregistered and its file removed."""

    ACTION: ClassVar[str] = "store.key_reencrypted"
    old_key_id: str
    new_key_id: str
    blobs: int  # re-encrypted by this process (others may have done some)
    by: str  # node id or "cli"


@dataclass(frozen=True, kw_only=True)
class StoreBackedUp(AuditEvent):
    """`mss-relay backup DIR`: a consistent snapshot with the key files and anchors."""

    ACTION: ClassVar[str] = "store.backed_up"
    directory: str
    engine: str
    audit_seq: int  # the audit head inside the snapshot
    operator: str


@dataclass(frozen=True, kw_only=True)
class StoreRestored(AuditEvent):
    """`mss-relay restore DIR` onto an empty data directory; `audit verify` passed."""

    ACTION: ClassVar[str] = "store.restored"
    directory: str
    backed_up_at: str
    audit_seq: int
    operator: str


@dataclass(frozen=True, kw_only=True)
class KeyRegistered(AuditEvent):
    """An existing key file's fingerprint was recorded (a store from before fingerprints,
    or keys made before the database)."""

    ACTION: ClassVar[str] = "store.key_registered"
    key_file: str
    key_id: str
    kind: str


@dataclass(frozen=True, kw_only=True)
class TrustSpaceImported(AuditEvent):
    ACTION: ClassVar[str] = "trust_space.imported"
    source: str
    domains: int
    generated: str | None


# --- IMAP: every command that touches a shared box (issue 4, "Traceability") ---------


@dataclass(frozen=True, kw_only=True)
class ImapSelected(AuditEvent):
    """SELECT or EXAMINE of a folder."""

    ACTION: ClassVar[str] = "imap.select"
    folder: str
    read_only: bool
    messages: int


@dataclass(frozen=True, kw_only=True)
class ImapFetched(AuditEvent):
    """A FETCH that returned message content (headers or body): which messages, and
    which sections, never the content itself."""

    ACTION: ClassVar[str] = "imap.fetch"
    folder: str
    uids: tuple[int, ...]
    message_ids: tuple[str, ...]
    items: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class ImapFlagsChanged(AuditEvent):
    ACTION: ClassVar[str] = "imap.store"
    folder: str
    uids: tuple[int, ...]
    mode: str  # FLAGS | +FLAGS | -FLAGS
    flags: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class ImapExpunged(AuditEvent):
    ACTION: ClassVar[str] = "imap.expunge"
    folder: str
    uids: tuple[int, ...]
    message_ids: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class ImapCopied(AuditEvent):
    """COPY or MOVE (``moved``) of messages from `box`/`folder` to another folder."""

    ACTION: ClassVar[str] = "imap.copy"
    folder: str
    target_box: str
    target_folder: str
    uids: tuple[int, ...]
    message_ids: tuple[str, ...]
    moved: bool


@dataclass(frozen=True, kw_only=True)
class ImapAppended(AuditEvent):
    ACTION: ClassVar[str] = "imap.append"
    folder: str
    uid: int
    message_id: str | None
    size_bytes: int


@dataclass(frozen=True, kw_only=True)
class ImapRefused(AuditEvent):
    """An IMAP operation refused for want of a right (``NO [NOPERM]``): the request and
    the answer. At most `limits.imap_refusals_audited_per_minute` per session;
    `suppressed` counts the refusals of that session not recorded since the last one."""

    ACTION: ClassVar[str] = "imap.refused"
    folder: str | None
    suppressed: int = 0


@dataclass(frozen=True, kw_only=True)
class ImapRefusalsSuppressed(AuditEvent):
    """At the end of a session: refusals past the per-minute allowance, not recorded."""

    ACTION: ClassVar[str] = "imap.refusals_suppressed"
    count: int


@dataclass(frozen=True, kw_only=True)
class ImapFolderChanged(AuditEvent):
    """CREATE, DELETE or RENAME of a folder."""

    ACTION: ClassVar[str] = "imap.folder"
    operation: str  # create | delete | rename
    folder: str
    new_name: str | None = None


@dataclass(frozen=True, kw_only=True)
class ImapAccessRevoked(AuditEvent):
    """A config reload took the person's access to the box away: their open IMAP
    sessions on it were closed."""

    ACTION: ClassVar[str] = "imap.access_revoked"
    sessions: int


@dataclass(frozen=True, kw_only=True)
class SessionsKicked(AuditEvent):
    """`mss-relay kick`: the administrator cut the person's sessions (on `box` if
    given); `by_uid` is the control socket client's user id (SO_PEERCRED)."""

    ACTION: ClassVar[str] = "control.kicked"
    imap_sessions: int
    smtp_sessions: int
    by_uid: int


# --- outbound delivery (issue 5): one event per recipient and attempt -----------------
# `person` and `box` are those of the submission (who sent, as which box); `peer` is the
# peer MTA as "host:port"; `request` the SMTP envelope; `answer` the peer's reply or our
# reason. Never the content.


@dataclass(frozen=True, kw_only=True)
class DeliveryDelivered(AuditEvent):
    ACTION: ClassVar[str] = "delivery.delivered"
    queue_id: str
    recipient: str
    sender: str
    message_id: str | None
    attempts: int
    certificate_subject: str | None = None


@dataclass(frozen=True, kw_only=True)
class DeliveryDeferred(AuditEvent):
    """A 4xx reply, a connection or TLS failure: the recipient is retried later."""

    ACTION: ClassVar[str] = "delivery.deferred"
    queue_id: str
    recipient: str
    sender: str
    message_id: str | None
    attempts: int
    reason: str
    next_attempt: str  # ISO 8601, UTC
    certificate_subject: str | None = None


@dataclass(frozen=True, kw_only=True)
class DeliveryBounced(AuditEvent):
    """A 5xx reply or the queue lifetime exceeded: the recipient is given up."""

    ACTION: ClassVar[str] = "delivery.bounced"
    queue_id: str
    recipient: str
    sender: str
    message_id: str | None
    attempts: int
    reason: str
    certificate_subject: str | None = None


@dataclass(frozen=True, kw_only=True)
class DeliveryReportQueued(AuditEvent):
    """A delivery status notification (RFC 3464) for a message, to its sender."""

    ACTION: ClassVar[str] = "delivery.dsn"
    queue_id: str  # the original message's queue id
    dsn_queue_id: str  # the DSN's own
    kind: str  # failure | delay
    to: str
    recipients: tuple[str, ...]
    local: bool  # put in the sender's INBOX (else queued for relay)


@dataclass(frozen=True, kw_only=True)
class QueueManualAction(AuditEvent):
    """`mss-relay queue retry | bounce | delete` by an operator."""

    ACTION: ClassVar[str] = "queue.manual"
    action: str  # retry | bounce | delete
    target: str  # the ID given on the command line
    operator: str  # the OS user who ran the command
    rows: tuple[int, ...]
    recipients: tuple[str, ...]


# --- CRL refresh (issue 5) ----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CrlUpdated(AuditEvent):
    """A newer CRL of an issuer is in use (TLS contexts swapped)."""

    ACTION: ClassVar[str] = "tls.crl_updated"
    issuer: str
    source: str  # file path or URL
    this_update: str
    next_update: str | None
    crl_number: int | None


@dataclass(frozen=True, kw_only=True)
class CrlRejected(AuditEvent):
    """A CRL that cannot be trusted (bad signature, unknown issuer, malformed)."""

    ACTION: ClassVar[str] = "tls.crl_rejected"
    source: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class CrlStale(AuditEvent):
    """No fresh CRL for an issuer past nextUpdate + grace: handshakes with certificates
    it issued fail closed until a fresh CRL is loaded."""

    ACTION: ClassVar[str] = "tls.crl_stale"
    issuer: str
    next_update: str | None
    grace_seconds: int


@dataclass(frozen=True, kw_only=True)
class ConversationChanged(AuditEvent):
    """A patient conversation opened, continued, closed (X-MSS-MES: FIN) or reopened."""

    ACTION: ClassVar[str] = "patient.conversation"
    ins: str
    change: str  # opened | continued | closed | reopened
    by: str  # professional | patient
    message_id: str | None


@dataclass(frozen=True, kw_only=True)
class UpstreamChangeRefused(AuditEvent):
    """Gateway mode: the operator refused a co-holder's change replayed to it
    (`relay.upstream.replayer`); the local state was brought back to the operator's.
    `person` is the co-holder who made the change."""

    ACTION: ClassVar[str] = "upstream.change_refused"
    journal_id: int
    kind: str
    folder: str | None
    restored: str  # what was done locally: "flags re-compared", "copy removed", ...


@dataclass(frozen=True, kw_only=True)
class UpstreamCredentialsRefused(AuditEvent):
    """Gateway mode: the operator refused the box's credential (`relay.upstream.sync`).
    Recorded once per refused credential: the engine does not try it again until the
    password file (or the certificate) changes."""

    ACTION: ClassVar[str] = "upstream.credentials_refused"
    endpoint: str
    reason: str
