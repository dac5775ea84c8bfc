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
    # The newest UIDVALIDITY given to a folder of this box, deleted ones included: a
    # folder deleted and created again gets a new one (RFC 3501 §2.3.1.1).
    Column("last_uidvalidity", BigInteger, nullable=False, server_default="0"),
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
    # RFC 3501 §2.3.2 \Recent: the first UID no session has been told of yet. The
    # session that moves it past a message (SELECT, or the first to see it arrive
    # while selected read-write) is the one that sees that message as \Recent.
    Column("recent_uid", BigInteger, nullable=False, server_default="1"),
    UniqueConstraint("mailbox_id", "name", name="uq_folders_mailbox_name"),
)

# Message bodies, AES-256-GCM encrypted; the id (random) is the associated data, so a
# ciphertext moved to another row does not decrypt.
blobs = Table(
    "blobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("size", Integer, nullable=False),
    # relay.message.analyse() output as JSON, sealed like the body: it holds the
    # subject and addresses, which are health data too.
    Column("meta", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # The sealed body, last (migration 0007): SQLite reads `meta` without walking a
    # big body's overflow pages, and keeps a zeroblob() in the last column lazy, so a
    # big body is written into its row in pieces (fastsql.SqliteRaw.insert_blob).
    Column("data", LargeBinary, nullable=False),
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
    # The zone the INTERNALDATE was given in (APPEND, RFC 3501 §6.3.11), in minutes
    # east of UTC; `internal_date` holds the instant.
    Column("internal_offset", Integer, nullable=False, server_default="0"),
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
    # The first row whose hash is keyed (HMAC-SHA256 with the audit key); rows before
    # it predate the audit key (plain SHA-256). NULL: no row is keyed yet.
    Column("keyed_from", BigInteger),
)

# The keys this store's data depends on, by fingerprint (HMAC-SHA256 of a constant
# under the key: it names the key and reveals nothing of it). Never the keys
# themselves: they live in files outside the database (relay.store.keys).
store_keys = Table(
    "store_keys",
    metadata,
    Column("key_id", String(16), primary_key=True),  # first 16 hex digits of fingerprint
    Column("kind", String(8), nullable=False),  # blob | audit
    Column("fingerprint", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("retired_at", DateTime(timezone=True)),  # blob keys: no longer seals new blobs
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

# --- gateway mode (relay.upstream): boxes hosted at an MSSanté operator, mirrored here.

# One row per box that has (or had) an [mailboxes.upstream] table: whether it is
# mirrored now, who syncs it (a lease, so one process per box across nodes and the
# CLI), and what `mss-relay upstream status` shows.
upstream_boxes = Table(
    "upstream_boxes",
    metadata,
    Column("box", String(320), primary_key=True),
    Column("enabled", Boolean, nullable=False),
    Column("lease_owner", String(128)),
    Column("lease_until", DateTime(timezone=True)),
    # never | syncing | idle | unreachable | credentials_refused | error
    Column("state", String(32), nullable=False),
    Column("last_sync_at", DateTime(timezone=True)),
    Column("last_error", Text),
    Column("last_error_at", DateTime(timezone=True)),
    Column("capabilities", Text),
    Column("progress_done", Integer, nullable=False, default=0),
    Column("progress_total", Integer, nullable=False, default=0),
    Column("sync_requested_at", DateTime(timezone=True)),
    Column("replayed", BigInteger, nullable=False, default=0),
    Column("downloaded", BigInteger, nullable=False, default=0),
)

# A local folder linked to a folder at the operator, and how far it is mirrored
# (RFC 7162: the operator's HIGHESTMODSEQ when it has CONDSTORE, else 0).
upstream_folders = Table(
    "upstream_folders",
    metadata,
    Column("folder_id", Integer, ForeignKey("folders.id", ondelete="CASCADE"), primary_key=True),
    Column("box", String(320), nullable=False),
    Column("remote_name", String(1024), nullable=False),
    Column("uidvalidity", BigInteger, nullable=False),  # 0: not selected yet
    Column("highestmodseq", BigInteger, nullable=False),
    Column("uidnext", BigInteger, nullable=False),
    Column("synced_at", DateTime(timezone=True)),
    # Compare every message's flags with the operator's at the next round (after a
    # refused change: the local state is brought back to the operator's).
    Column("resync", Boolean, nullable=False, default=False),
)
Index("ix_upstream_folders_box", upstream_folders.c.box)

# Remote UID ↔ local UID of each mirrored message, with the operator's MODSEQ and flags
# as last seen (a flag change is the operator's when they differ from these). Not tied
# to `messages`: a row outlives a local expunge until the expunge reached the operator.
upstream_messages = Table(
    "upstream_messages",
    metadata,
    Column("folder_id", Integer, ForeignKey("folders.id", ondelete="CASCADE"), primary_key=True),
    Column("remote_uid", BigInteger, primary_key=True),
    Column("local_uid", BigInteger, nullable=False),
    Column("modseq", BigInteger, nullable=False),
    Column("flags", Text, nullable=False),
    UniqueConstraint("folder_id", "local_uid", name="uq_upstream_messages_local"),
)

# Local changes to a mirrored box, written in the same transaction as the change
# (relay.store.mailstore), replayed to the operator in `id` order, then removed. A
# change the operator refused stays, `state = refused`, for `upstream status`.
upstream_journal = Table(
    "upstream_journal",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("box", String(320), nullable=False),
    # flags | expunge | append | copy | move | create | rename | delete
    Column("kind", String(16), nullable=False),
    Column("folder_id", Integer),
    Column("folder", String(512)),
    Column("data", Text, nullable=False),  # JSON, by kind (relay.store.mailstore)
    Column("person", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("state", String(16), nullable=False),  # pending | refused
    Column("attempts", Integer, nullable=False, default=0),
    # Set before the operator is asked (JSON): lets a replay cut by a crash find out
    # whether its APPEND or COPY took effect, so nothing is sent twice.
    Column("in_flight", Text),
    Column("last_error", Text),
)
Index("ix_upstream_journal_box_state", upstream_journal.c.box, upstream_journal.c.state)
