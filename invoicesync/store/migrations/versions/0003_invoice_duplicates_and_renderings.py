"""invoice duplicates and renderings

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rendering_of", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_documents_rendering_of_invoices"),
            "invoices",
            ["rendering_of"],
            ["id"],
            ondelete="SET NULL",
        )

    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("business_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("duplicate_of", sa.Integer(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_invoices_duplicate_of"), ["duplicate_of"], unique=False
        )
        batch_op.create_index(
            "uq_invoices_live_business_key",
            ["business_key"],
            unique=True,
            sqlite_where=sa.text("duplicate_of IS NULL"),
            postgresql_where=sa.text("duplicate_of IS NULL"),
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_invoices_duplicate_of_invoices"),
            "invoices",
            ["duplicate_of"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_invoices_duplicate_of_invoices"), type_="foreignkey"
        )
        batch_op.drop_index(
            "uq_invoices_live_business_key",
            sqlite_where=sa.text("duplicate_of IS NULL"),
            postgresql_where=sa.text("duplicate_of IS NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_invoices_duplicate_of"))
        batch_op.drop_column("duplicate_of")
        batch_op.drop_column("business_key")

    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_documents_rendering_of_invoices"), type_="foreignkey"
        )
        batch_op.drop_column("rendering_of")
