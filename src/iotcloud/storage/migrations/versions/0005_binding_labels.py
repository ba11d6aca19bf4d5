"""Per-binding device labels (``dev_label`` of ``PUT /app/bindings/{did}``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # existing bindings get no labels; the literal casts to JSONB on PostgreSQL
    op.add_column(
        "bindings",
        sa.Column("dev_label", JSON, server_default=sa.text("'[]'"), nullable=False),
    )


def downgrade() -> None:
    with op.batch_alter_table("bindings") as batch:
        batch.drop_column("dev_label")
