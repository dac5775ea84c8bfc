"""imap: expunged UIDs and the changes-since index

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "expunged",
        sa.Column("folder_id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("modseq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["folder_id"],
            ["folders.id"],
            name=op.f("fk_expunged_folder_id_folders"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("folder_id", "uid", name=op.f("pk_expunged")),
    )
    with op.batch_alter_table("expunged", schema=None) as batch_op:
        batch_op.create_index("ix_expunged_folder_modseq", ["folder_id", "modseq"], unique=False)
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index("ix_messages_folder_modseq", ["folder_id", "modseq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_folder_modseq")
    with op.batch_alter_table("expunged", schema=None) as batch_op:
        batch_op.drop_index("ix_expunged_folder_modseq")
    op.drop_table("expunged")
