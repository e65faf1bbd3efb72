"""Queue positions of waiting jobs, as of the last admission cycle.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 13:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("queue_position", sa.Integer(), nullable=True))
    op.add_column("jobs", sa.Column("tenant_queue_position", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "tenant_queue_position")
    op.drop_column("jobs", "queue_position")
