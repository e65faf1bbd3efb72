"""A tenant's priority ceiling: tenants.max_priority, granted by an admin.

- tenants.max_priority, the highest priority the tenant's jobs may have, default 0 (the spec's
  default priority), so existing tenants keep submitting what they could by default and no
  longer above it. A constant default makes the addition a catalogue change, not a rewrite.
- A check keeps it within the job spec's priority range, -1000 to 1000 (written out: a
  migration must not change if the code's range ever does).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "tenants",
        sa.Column("max_priority", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_tenants_max_priority_in_range"),
        "tenants",
        "max_priority BETWEEN -1000 AND 1000",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_tenants_max_priority_in_range"), "tenants", type_="check")
    op.drop_column("tenants", "max_priority")
