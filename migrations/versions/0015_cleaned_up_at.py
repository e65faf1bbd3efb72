"""Finished jobs' objects cleaned up: jobs.cleaned_up_at.

When a finished job's TTL (``run_policy.ttl_seconds_after_finished``, else the gateway's
default) has passed, the leader deletes its parent ConfigMap (Kubernetes collects what the
clean-pod policy kept) and stamps ``cleaned_up_at``, so no job is cleaned up twice. Jobs that
finished before this migration are cleaned up once their TTL has passed too. A partial index
serves the leader's search for jobs due.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 16:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("cleaned_up_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_jobs_to_clean_up",
        "jobs",
        ["finished_at"],
        postgresql_where=sa.text("finished_at IS NOT NULL AND cleaned_up_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_to_clean_up", table_name="jobs")
    op.drop_column("jobs", "cleaned_up_at")
