"""Alembic environment: migrations always run on a connection handed in by ``Database.migrate``."""

from __future__ import annotations

from alembic import context

from iotcloud.storage import rate_limits  # noqa: F401  (its table is on Base's metadata too)
from iotcloud.storage.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `iotcloud migrate` (Database.migrate)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
