"""Tables. SQLAlchemy Core: the store is the only module that speaks SQL.

Every change to these tables comes with an Alembic migration in `migrations/versions`;
`tests/store/test_migrations.py` checks the two agree.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

mailboxes = Table(
    "mailboxes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("address", String(320), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

folders = Table(
    "folders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("mailbox_id", Integer, ForeignKey("mailboxes.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(512), nullable=False),
    Column("uidvalidity", BigInteger, nullable=False),
    Column("uidnext", BigInteger, nullable=False),
    Column("highestmodseq", BigInteger, nullable=False),
    Column("special_use", String(32)),
    UniqueConstraint("mailbox_id", "name", name="uq_folders_mailbox_name"),
)

# Message bodies, AES-256-GCM encrypted; the id (random) is the associated data, so a
# ciphertext moved to another row does not decrypt.
blobs = Table(
    "blobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    # relay.message.analyse() output as JSON, sealed like the body: it holds the
    # subject and addresses, which are health data too.
    Column("meta", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("folder_id", Integer, ForeignKey("folders.id", ondelete="CASCADE"), nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("modseq", BigInteger, nullable=False),
    Column("blob_id", String(32), ForeignKey("blobs.id"), nullable=False),
    Column("internal_date", DateTime(timezone=True), nullable=False),
    Column("size", Integer, nullable=False),
    # System flags and keywords, space separated; `\Seen` lives here only for boxes with
    # shared \Seen; per-person \Seen is in `seen`.
    Column("flags", Text, nullable=False, default=""),
    Column("message_id", String(998)),
    UniqueConstraint("folder_id", "uid", name="uq_messages_folder_uid"),
)
Index("ix_messages_blob", messages.c.blob_id)
# IMAP: "what changed since MODSEQ n" for IDLE / NOOP updates and CONDSTORE (RFC 7162).
Index("ix_messages_folder_modseq", messages.c.folder_id, messages.c.modseq)

# IMAP: UIDs removed from a folder, with the MODSEQ of the removal, so that every
# session on the folder learns of an expunge by asking "what changed since n"
# (RFC 7162 §3.2.5.2 VANISHED needs the same record). Old rows may be pruned.
expunged = Table(
    "expunged",
    metadata,
    Column("folder_id", Integer, ForeignKey("folders.id", ondelete="CASCADE"), primary_key=True),
    Column("uid", BigInteger, primary_key=True),
    Column("modseq", BigInteger, nullable=False),
)
Index("ix_expunged_folder_modseq", expunged.c.folder_id, expunged.c.modseq)

seen = Table(
    "seen",
    metadata,
    Column(
        "message_id",
        Integer,
        ForeignKey("messages.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("person", String(64), primary_key=True),
)

subscriptions = Table(
    "subscriptions",
    metadata,
    Column("person", String(64), primary_key=True),
    Column("mailbox", String(320), primary_key=True),
    Column("folder", String(512), primary_key=True),
)

# One row per (message, remote recipient): the outbound queue.
queue = Table(
    "queue",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("queue_id", String(32), nullable=False),  # the acceptance id, shared by recipients
    Column("blob_id", String(32), ForeignKey("blobs.id"), nullable=False),
    Column("sender", String(320), nullable=False),
    Column("recipient", String(320), nullable=False),
    Column("status", String(16), nullable=False),  # queued | deferred | delivered | bounced
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_attempt_at", DateTime(timezone=True)),
    Column("last_reply", Text),
    Column("message_id", String(998)),
    Column("person", String(64)),
    Column("box", String(320)),
    Column("delay_warned", Boolean, nullable=False, default=False),
)
Index("ix_queue_due", queue.c.status, queue.c.next_attempt_at)
Index("ix_queue_queue_id", queue.c.queue_id)

audit = Table(
    "audit",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("ts", String(40), nullable=False),
    Column("action", String(64), nullable=False),
    Column("person", String(64)),
    Column("box", String(320)),
    Column("peer", String(128)),
    Column("data", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)
Index("ix_audit_box", audit.c.box)
Index("ix_audit_person", audit.c.person)
Index("ix_audit_action", audit.c.action)

# One row (id = 1): the newest sequence number and hash. Locked for update by every
# transaction that appends audit rows, which orders rows across several nodes.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

# The ANS trust-space whitelist (listeblanchemssante.xml), as last imported.
trust_space = Table(
    "trust_space",
    metadata,
    Column("domain", String(255), primary_key=True),  # IDNA ASCII, lower case
    Column("name", String(255), nullable=False),  # as published (may be non-ASCII)
    Column("certificate_dn", Text),
    Column("description", Text),
    Column("updated", String(40)),
    Column("imported_at", DateTime(timezone=True), nullable=False),
)

# Patient conversations (MSSANTE.md, patient messaging): a professional box opens a
# conversation with a patient (by INS) by writing first; the patient may only reply
# while it is open; `X-MSS-MES: FIN` closes it.
conversations = Table(
    "conversations",
    metadata,
    Column("box", String(320), primary_key=True),
    Column("ins", String(15), primary_key=True),
    Column("state", String(8), nullable=False),  # open | closed
    Column("opened_by", String(16), nullable=False),  # professional | patient (pharmacy)
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("closed_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("last_message_id", String(998)),
    Column("messages", Integer, nullable=False, default=0),
)
