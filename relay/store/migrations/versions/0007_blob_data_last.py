"""blobs: the sealed body moves to the table's last column (SQLite)

SQLite stores a row's columns in order and a big value on a chain of overflow pages:
with `data` before `meta` and `created_at`, reading a big message's `meta` walked its
whole body, and a zeroblob() written into `data` was materialised (with the record
around it) instead of staying lazy, so a big body could not be written into its row in
pieces (Connection.blobopen). SQLite cannot reorder columns: the table is rebuilt.

PostgreSQL keeps a big value out of line (TOAST) whatever its column's place: nothing
to do there (the declared order is only SQLite's concern).

The rebuild runs in the migration's one transaction with foreign keys on (the
connection's PRAGMA cannot change inside it): with defer_foreign_keys, dropping
`blobs` leaves the rows of `messages` and `queue` that name a blob counted as
violations until the same ids are inserted into the new `blobs`, so the rows are
copied aside first and back after (twice the table's size written once; the commit
fails, and nothing changes, if any reference were left dangling).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 16:00:00.000000
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_ASIDE = "_blobs_0007"


def _column(name: str) -> sa.Column[Any]:
    types: dict[str, Any] = {
        "id": sa.String(length=32),
        "size": sa.Integer(),
        "data": sa.LargeBinary(),
        "meta": sa.LargeBinary(),
        "created_at": sa.DateTime(timezone=True),
    }
    return sa.Column(name, types[name], nullable=False)


def _rebuild(order: tuple[str, ...]) -> None:
    """`blobs` again with its columns in `order`, its rows and key kept."""
    op.execute("PRAGMA defer_foreign_keys = ON")  # off again at COMMIT
    aside = op.create_table(_ASIDE, *(_column(c) for c in order))
    old = sa.table("blobs", *(sa.column(c) for c in order))
    op.execute(aside.insert().from_select(order, sa.select(*old.c)))
    op.drop_table("blobs")
    new = op.create_table(
        "blobs",
        *(_column(c) for c in order),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_blobs")),
    )
    op.execute(new.insert().from_select(order, sa.select(*aside.c)))
    op.drop_table(_ASIDE)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(("id", "size", "meta", "created_at", "data"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(("id", "size", "data", "meta", "created_at"))
