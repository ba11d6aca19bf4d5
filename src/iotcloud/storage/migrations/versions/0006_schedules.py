"""Cloud schedules and their runs (the scheduler engine).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", PK, autoincrement=True, nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", PK, nullable=False),
        sa.Column("app_id", PK, nullable=False),
        sa.Column("dialect", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("remark", sa.String(length=1024), nullable=False),
        sa.Column("device_did", sa.String(length=22), nullable=True),
        sa.Column("rule", sa.String(length=16), nullable=False),
        sa.Column("on_date", sa.Date(), nullable=True),
        sa.Column("weekdays", JSON, nullable=False),
        sa.Column("month_days", JSON, nullable=False),
        sa.Column("at_time", sa.Time(), nullable=False),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.Column("start_date", sa.Date(), nullable=True),
        sa.Column("end_date", sa.Date(), nullable=True),
        sa.Column("rearm", sa.Boolean(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("retry_count", sa.Integer(), nullable=False),
        sa.Column("retry_task", sa.String(length=8), nullable=False),
        sa.Column("tasks", JSON, nullable=False),
        sa.Column("next_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_schedules_user_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_schedules_app_id_apps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
        sa.UniqueConstraint("public_id", name=op.f("uq_schedules_public_id")),
    )
    op.create_index("ix_schedules_user_id_device_did", "schedules", ["user_id", "device_did"])
    op.create_index("ix_schedules_next_due_at", "schedules", ["next_due_at"])
    op.create_table(
        "schedule_runs",
        sa.Column("id", PK, autoincrement=True, nullable=False),
        sa.Column("schedule_id", PK, nullable=False),
        sa.Column("scheduled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("detail", JSON, nullable=False),
        sa.Column("attempts", JSON, nullable=False),
        sa.Column("tasks", JSON, nullable=True),
        sa.Column("retry_count", sa.Integer(), nullable=False),
        sa.Column("retry_task", sa.String(length=8), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("note", sa.String(length=256), nullable=True),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["schedules.id"],
            name=op.f("fk_schedule_runs_schedule_id_schedules"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule_runs")),
        # one run per occurrence: a second process firing the same instant fails to insert
        sa.UniqueConstraint(
            "schedule_id",
            "scheduled_at",
            name=op.f("uq_schedule_runs_schedule_id_scheduled_at"),
        ),
    )
    op.create_index("ix_schedule_runs_next_attempt_at", "schedule_runs", ["next_attempt_at"])
    op.create_index("ix_schedule_runs_finished_at", "schedule_runs", ["finished_at"])


def downgrade() -> None:
    op.drop_table("schedule_runs")
    op.drop_table("schedules")
