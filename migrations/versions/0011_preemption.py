"""Preemption: tenants.preemption_policy, jobs.preemptions.

A tenant's preemption policy says whether its waiting jobs may preempt its own running gangs of
lower priority ('never', the default, or 'lower_priority'). Reclaim within a cohort needs no
policy: a tenant below its nominal quota always gets it back.

A job counts how often it was preempted. A preemption requeues the job, like an eviction, with a
new attempt, but it is not the job's fault: it does not count against the requeue limit
(``attempt - preemptions`` does), and it backs the job off only once it repeats.

Both are catalogue changes (constant defaults); checks keep the values in range.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 11:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "tenants",
        sa.Column(
            "preemption_policy", sa.Text(), server_default=sa.text("'never'"), nullable=False
        ),
    )
    op.create_check_constraint(
        op.f("ck_tenants_preemption_policy_known"),
        "tenants",
        "preemption_policy IN ('never', 'lower_priority')",
    )
    op.add_column(
        "jobs",
        sa.Column("preemptions", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_jobs_preemptions_within_attempts"),
        "jobs",
        "preemptions >= 0 AND preemptions <= attempt",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_jobs_preemptions_within_attempts"), "jobs", type_="check")
    op.drop_column("jobs", "preemptions")
    op.drop_constraint(op.f("ck_tenants_preemption_policy_known"), "tenants", type_="check")
    op.drop_column("tenants", "preemption_policy")
