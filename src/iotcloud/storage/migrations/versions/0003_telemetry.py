"""Device telemetry: latest state, history and the frame log.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "device_latest",
        sa.Column("device_id", PK, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attrs", JSON, nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_device_latest_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_device_latest")),
    )
    op.create_table(
        "device_history",
        sa.Column("id", PK, autoincrement=True, nullable=False),
        sa.Column("device_id", PK, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attrs", JSON, nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_device_history_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_history")),
    )
    op.create_index("ix_device_history_device_id_at", "device_history", ["device_id", "at"])
    op.create_index("ix_device_history_at", "device_history", ["at"])
    op.create_table(
        "device_events",
        sa.Column("id", PK, autoincrement=True, nullable=False),
        sa.Column("device_id", PK, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=True),
        sa.Column("detail", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_device_events_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_events")),
    )
    op.create_index("ix_device_events_device_id_at", "device_events", ["device_id", "at"])
    op.create_index("ix_device_events_at", "device_events", ["at"])


def downgrade() -> None:
    op.drop_table("device_events")
    op.drop_table("device_history")
    op.drop_table("device_latest")
