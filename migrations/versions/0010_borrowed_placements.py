"""What of each placement is borrowed: placements.borrowed_cpu_millis, borrowed_memory_bytes and
borrowed_gpu_shares.

Admission records, on each pod's placement, how much of what it holds lies above its tenant's
nominal quota, on quota its cohort lent (the last pods of a gang are counted borrowed first).
Reclaim will choose among the gangs that hold borrowed quota. A constant default of 0 (nothing
borrowed, as for every placement made before cohorts) keeps the addition a catalogue change; a
check keeps each amount within what the placement holds.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 10:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = {
    "borrowed_cpu_millis": "cpu_millis",
    "borrowed_memory_bytes": "memory_bytes",
    "borrowed_gpu_shares": "gpu_shares",
}


def upgrade() -> None:
    for column in COLUMNS:
        op.add_column(
            "placements",
            sa.Column(column, sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        )
    op.create_check_constraint(
        op.f("ck_placements_borrowed_within_held"),
        "placements",
        " AND ".join(f"{b} >= 0 AND {b} <= {held}" for b, held in COLUMNS.items()),
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_placements_borrowed_within_held"), "placements", type_="check")
    for column in reversed(COLUMNS):
        op.drop_column("placements", column)
