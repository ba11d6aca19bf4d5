"""The Tencent dialect: data-template devices (name, psk), per-property update times, device
events, user settings and the replay guard of the signed app API.

* ``devices.name`` is the device's name within its product (Tencent ``DeviceName``); Gizwits
  devices are named by their MAC, so existing rows take it. ``mac`` becomes optional (a
  data-template device has none) and ``psk`` holds a data-template device's key (base64).
* ``device_latest.attr_times`` maps each data point to when it was last reported (ms).
* ``device_thing_events`` keeps data-template events (``event_post``/``events_post``).
* ``users``: ``avatar``, ``time_zone`` (IANA; Tencent timers without ``TimeZone`` use it) and
  ``settings`` (the ``AppUpdateUserSetting`` flags and values).
* ``api_nonces``: each (app, Timestamp, Nonce) of a signed ``appapi`` call, accepted once.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("devices", sa.Column("name", sa.String(length=48), nullable=True))
    op.add_column("devices", sa.Column("psk", sa.String(length=64), nullable=True))
    op.execute("UPDATE devices SET name = mac")
    with op.batch_alter_table("devices") as batch:
        batch.alter_column("name", existing_type=sa.String(length=48), nullable=False)
        batch.alter_column("mac", existing_type=sa.String(length=12), nullable=True)
        batch.create_unique_constraint(op.f("uq_devices_product_id_name"), ["product_id", "name"])

    op.add_column("device_latest", sa.Column("attr_times", JSON, nullable=True))

    op.create_table(
        "device_thing_events",
        sa.Column("id", PK, autoincrement=True, nullable=False),
        sa.Column("device_id", PK, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=16), nullable=False),
        sa.Column("params", JSON, nullable=False),
        sa.Column("client_token", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_device_thing_events_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_thing_events")),
    )
    op.create_index(
        "ix_device_thing_events_device_id_at", "device_thing_events", ["device_id", "at"]
    )
    op.create_index("ix_device_thing_events_at", "device_thing_events", ["at"])

    op.add_column("users", sa.Column("avatar", sa.String(length=512), nullable=True))
    op.add_column("users", sa.Column("time_zone", sa.String(length=64), nullable=True))
    op.add_column("users", sa.Column("settings", JSON, nullable=True))

    op.create_table(
        "api_nonces",
        sa.Column("id", PK, autoincrement=True, nullable=False),
        sa.Column("app_id", PK, nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("nonce", sa.String(length=32), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_api_nonces_app_id_apps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_nonces")),
        sa.UniqueConstraint(
            "app_id", "timestamp", "nonce", name=op.f("uq_api_nonces_app_id_timestamp_nonce")
        ),
    )
    op.create_index("ix_api_nonces_used_at", "api_nonces", ["used_at"])


def downgrade() -> None:
    op.drop_index("ix_api_nonces_used_at", table_name="api_nonces")
    op.drop_table("api_nonces")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("settings")
        batch.drop_column("time_zone")
        batch.drop_column("avatar")
    op.drop_index("ix_device_thing_events_at", table_name="device_thing_events")
    op.drop_index("ix_device_thing_events_device_id_at", table_name="device_thing_events")
    op.drop_table("device_thing_events")
    with op.batch_alter_table("device_latest") as batch:
        batch.drop_column("attr_times")
    op.execute("DELETE FROM devices WHERE mac IS NULL")
    with op.batch_alter_table("devices") as batch:
        batch.drop_constraint(op.f("uq_devices_product_id_name"), type_="unique")
        batch.alter_column("mac", existing_type=sa.String(length=12), nullable=False)
        batch.drop_column("psk")
        batch.drop_column("name")
