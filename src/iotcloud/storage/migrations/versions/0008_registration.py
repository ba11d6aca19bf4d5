"""Registration policy per product, and device ownership.

* ``products.registration``: how its devices may register themselves: ``open`` (GAgent's plain
  ``POST /dev/devices``), ``signed`` (only the AES-encrypted ``POST /dev/{product_key}/device``)
  or ``preprovisioned`` (only devices an operator created, with their own passcode).
* ``devices.origin``: who created the device: ``operator`` (``device create``/``import``, the
  operator API), ``registered`` (plain self-registration) or ``signed`` (encrypted
  self-registration). Existing rows cannot tell and take ``registered``.
* ``devices.owner_since``: when the device last registered with a different passcode (a new
  ownership; its bindings ended then). Users see its history only from then, and from their own
  binding.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "products",
        sa.Column("registration", sa.String(length=16), nullable=False, server_default="open"),
    )
    op.add_column(
        "devices",
        sa.Column("origin", sa.String(length=16), nullable=False, server_default="registered"),
    )
    op.add_column("devices", sa.Column("owner_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("owner_since")
        batch.drop_column("origin")
    with op.batch_alter_table("products") as batch:
        batch.drop_column("registration")
