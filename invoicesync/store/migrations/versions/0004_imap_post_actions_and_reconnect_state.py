"""imap post actions and reconnect state

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("needs_reconnect", sa.Text(), nullable=True))

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("post_action", sa.String(length=20), nullable=True))
        batch_op.create_index(batch_op.f("ix_messages_post_action"), ["post_action"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_messages_post_action"))
        batch_op.drop_column("post_action")

    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("needs_reconnect")
