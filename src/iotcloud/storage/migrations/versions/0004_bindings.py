"""Bindings between app users and devices.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "bindings",
        sa.Column("id", PK, autoincrement=True, nullable=False),
        sa.Column("user_id", PK, nullable=False),
        sa.Column("device_id", PK, nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("dev_alias", sa.String(length=128), server_default="", nullable=False),
        sa.Column("remark", sa.String(length=1024), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_bindings_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_bindings_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bindings")),
        sa.UniqueConstraint("user_id", "device_id", name=op.f("uq_bindings_user_id_device_id")),
    )
    op.create_index("ix_bindings_device_id", "bindings", ["device_id"])


def downgrade() -> None:
    op.drop_table("bindings")
