"""attempts counted when work starts: when and by which run an item was last started

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("documents", "messages"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
            batch_op.add_column(sa.Column("started_by", sa.String(length=255), nullable=True))


def downgrade() -> None:
    for table in ("messages", "documents"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("started_by")
            batch_op.drop_column("started_at")
