"""Shared rate limits: ``rate_limit_buckets``, one token bucket per (kind, key) row.

Written by every ``api`` process of a deployment (``IOTCLOUD_RATE_LIMIT_SHARED``) in upserts
of many leases at once, read by nobody else; rows that have refilled are deleted by
housekeeping (a missing row is a full bucket). ``stamp`` is seconds since the epoch by the
database's clock, as double precision: the refill arithmetic runs in SQL.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_limit_buckets",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("tokens", sa.Double(), nullable=False),
        sa.Column("stamp", sa.Double(), nullable=False),
        sa.Column("granted", sa.Integer(), nullable=False),
        sa.Column("rate", sa.Double(), nullable=False),
        sa.Column("capacity", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_rate_limit_buckets")),
    )


def downgrade() -> None:
    op.drop_table("rate_limit_buckets")
