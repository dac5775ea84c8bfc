"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 05:38:51.671668
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("ts", sa.String(length=40), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("person", sa.String(length=64), nullable=True),
        sa.Column("box", sa.String(length=320), nullable=True),
        sa.Column("peer", sa.String(length=128), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit")),
    )
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.create_index("ix_audit_action", ["action"], unique=False)
        batch_op.create_index("ix_audit_box", ["box"], unique=False)
        batch_op.create_index("ix_audit_person", ["person"], unique=False)

    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    op.create_table(
        "blobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("meta", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_blobs")),
    )
    op.create_table(
        "mailboxes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mailboxes")),
        sa.UniqueConstraint("address", name=op.f("uq_mailboxes_address")),
    )
    op.create_table(
        "subscriptions",
        sa.Column("person", sa.String(length=64), nullable=False),
        sa.Column("mailbox", sa.String(length=320), nullable=False),
        sa.Column("folder", sa.String(length=512), nullable=False),
        sa.PrimaryKeyConstraint("person", "mailbox", "folder", name=op.f("pk_subscriptions")),
    )
    op.create_table(
        "trust_space",
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("certificate_dn", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("updated", sa.String(length=40), nullable=True),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("domain", name=op.f("pk_trust_space")),
    )
    op.create_table(
        "folders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uidnext", sa.BigInteger(), nullable=False),
        sa.Column("highestmodseq", sa.BigInteger(), nullable=False),
        sa.Column("special_use", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["mailbox_id"],
            ["mailboxes.id"],
            name=op.f("fk_folders_mailbox_id_mailboxes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_folders")),
        sa.UniqueConstraint("mailbox_id", "name", name="uq_folders_mailbox_name"),
    )
    op.create_table(
        "queue",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("queue_id", sa.String(length=32), nullable=False),
        sa.Column("blob_id", sa.String(length=32), nullable=False),
        sa.Column("sender", sa.String(length=320), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_reply", sa.Text(), nullable=True),
        sa.Column("message_id", sa.String(length=998), nullable=True),
        sa.Column("person", sa.String(length=64), nullable=True),
        sa.Column("box", sa.String(length=320), nullable=True),
        sa.Column("delay_warned", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["blob_id"], ["blobs.id"], name=op.f("fk_queue_blob_id_blobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue")),
    )
    with op.batch_alter_table("queue", schema=None) as batch_op:
        batch_op.create_index("ix_queue_due", ["status", "next_attempt_at"], unique=False)
        batch_op.create_index("ix_queue_queue_id", ["queue_id"], unique=False)

    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("folder_id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("modseq", sa.BigInteger(), nullable=False),
        sa.Column("blob_id", sa.String(length=32), nullable=False),
        sa.Column("internal_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("flags", sa.Text(), nullable=False),
        sa.Column("message_id", sa.String(length=998), nullable=True),
        sa.ForeignKeyConstraint(["blob_id"], ["blobs.id"], name=op.f("fk_messages_blob_id_blobs")),
        sa.ForeignKeyConstraint(
            ["folder_id"],
            ["folders.id"],
            name=op.f("fk_messages_folder_id_folders"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sa.UniqueConstraint("folder_id", "uid", name="uq_messages_folder_uid"),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index("ix_messages_blob", ["blob_id"], unique=False)

    op.create_table(
        "seen",
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("person", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_seen_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", "person", name=op.f("pk_seen")),
    )
    # The chain starts from the genesis hash (relay.audit.chain.GENESIS_HASH).
    audit_head = sa.table(
        "audit_head",
        sa.column("id", sa.Integer),
        sa.column("seq", sa.BigInteger),
        sa.column("hash", sa.String),
    )
    op.bulk_insert(audit_head, [{"id": 1, "seq": 0, "hash": "0" * 64}])


def downgrade() -> None:
    op.drop_table("seen")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_blob")

    op.drop_table("messages")
    with op.batch_alter_table("queue", schema=None) as batch_op:
        batch_op.drop_index("ix_queue_queue_id")
        batch_op.drop_index("ix_queue_due")

    op.drop_table("queue")
    op.drop_table("folders")
    op.drop_table("trust_space")
    op.drop_table("subscriptions")
    op.drop_table("mailboxes")
    op.drop_table("blobs")
    op.drop_table("audit_head")
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_person")
        batch_op.drop_index("ix_audit_box")
        batch_op.drop_index("ix_audit_action")

    op.drop_table("audit")
