"""imap: \\Recent watermark, fresh UIDVALIDITY per box, INTERNALDATE zone

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 22:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("folders", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("recent_uid", sa.BigInteger(), nullable=False, server_default="1")
        )
    # Messages already stored were seen by whoever read them: none is \Recent.
    op.execute("UPDATE folders SET recent_uid = uidnext")
    with op.batch_alter_table("mailboxes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("last_uidvalidity", sa.BigInteger(), nullable=False, server_default="0")
        )
    op.execute(
        "UPDATE mailboxes SET last_uidvalidity = COALESCE("
        "(SELECT MAX(uidvalidity) FROM folders WHERE folders.mailbox_id = mailboxes.id), 0)"
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("internal_offset", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("internal_offset")
    with op.batch_alter_table("mailboxes", schema=None) as batch_op:
        batch_op.drop_column("last_uidvalidity")
    with op.batch_alter_table("folders", schema=None) as batch_op:
        batch_op.drop_column("recent_uid")
