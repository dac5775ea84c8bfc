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
        common = {f.name for f in dataclasses.fields(AuditEvent)}
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in common:
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple | frozenset) else value
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
    ACTION: ClassVar[str] = "store.key_created"
    key_file: str


@dataclass(frozen=True, kw_only=True)
class TrustSpaceImported(AuditEvent):
    ACTION: ClassVar[str] = "trust_space.imported"
    source: str
    domains: int
    generated: str | None
