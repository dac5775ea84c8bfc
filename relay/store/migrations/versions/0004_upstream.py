"""upstream: gateway mode (boxes hosted at an operator), mirror state and journal

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 22:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upstream_boxes",
        sa.Column("box", sa.String(length=320), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("last_sync_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("capabilities", sa.Text(), nullable=True),
        sa.Column("progress_done", sa.Integer(), nullable=False),
        sa.Column("progress_total", sa.Integer(), nullable=False),
        sa.Column("sync_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("replayed", sa.BigInteger(), nullable=False),
        sa.Column("downloaded", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("box", name=op.f("pk_upstream_boxes")),
    )
    op.create_table(
        "upstream_folders",
        sa.Column("folder_id", sa.Integer(), nullable=False),
        sa.Column("box", sa.String(length=320), nullable=False),
        sa.Column("remote_name", sa.String(length=1024), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("highestmodseq", sa.BigInteger(), nullable=False),
        sa.Column("uidnext", sa.BigInteger(), nullable=False),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resync", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["folder_id"],
            ["folders.id"],
            name=op.f("fk_upstream_folders_folder_id_folders"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("folder_id", name=op.f("pk_upstream_folders")),
    )
    op.create_index("ix_upstream_folders_box", "upstream_folders", ["box"], unique=False)
    op.create_table(
        "upstream_messages",
        sa.Column("folder_id", sa.Integer(), nullable=False),
        sa.Column("remote_uid", sa.BigInteger(), nullable=False),
        sa.Column("local_uid", sa.BigInteger(), nullable=False),
        sa.Column("modseq", sa.BigInteger(), nullable=False),
        sa.Column("flags", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["folder_id"],
            ["folders.id"],
            name=op.f("fk_upstream_messages_folder_id_folders"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("folder_id", "remote_uid", name=op.f("pk_upstream_messages")),
        sa.UniqueConstraint("folder_id", "local_uid", name="uq_upstream_messages_local"),
    )
    op.create_table(
        "upstream_journal",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("box", sa.String(length=320), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("folder_id", sa.Integer(), nullable=True),
        sa.Column("folder", sa.String(length=512), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("person", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("in_flight", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_upstream_journal")),
    )
    op.create_index(
        "ix_upstream_journal_box_state", "upstream_journal", ["box", "state"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_upstream_journal_box_state", table_name="upstream_journal")
    op.drop_table("upstream_journal")
    op.drop_table("upstream_messages")
    op.drop_index("ix_upstream_folders_box", table_name="upstream_folders")
    op.drop_table("upstream_folders")
    op.drop_table("upstream_boxes")
