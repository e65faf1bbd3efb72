"""Webhook delivery: attempts, the delivery lease, and secret rotation.

- webhook_attempts: one row per POST of a delivery (time, duration, status code, error, outcome);
- webhook_outbox.locked_until / locked_by: the lease of the delivery loop sending a row, so
  several gateways deliver at once without sending one event twice in parallel;
  webhook_outbox.delivered_at, and an index on job_id for a job's deliveries;
- tenants.previous_webhook_secret / webhook_secret_rotated_at: both secrets sign deliveries for
  an overlap after a rotation.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("previous_webhook_secret", sa.Text(), nullable=True))
    op.add_column(
        "tenants",
        sa.Column("webhook_secret_rotated_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "webhook_outbox", sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("webhook_outbox", sa.Column("locked_by", sa.UUID(), nullable=True))
    op.add_column(
        "webhook_outbox", sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index("ix_webhook_outbox_job_id", "webhook_outbox", ["job_id"], unique=False)
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("delivery_id", sa.UUID(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('delivered', 'failed', 'gone', 'refused')",
            name=op.f("ck_webhook_attempts_outcome_known"),
        ),
        sa.CheckConstraint(
            "number >= 1 AND duration_ms >= 0",
            name=op.f("ck_webhook_attempts_number_and_duration_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_outbox.id"],
            name=op.f("fk_webhook_attempts_delivery_id_webhook_outbox"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    op.create_index(
        "ix_webhook_attempts_delivery_id_id",
        "webhook_attempts",
        ["delivery_id", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_attempts_delivery_id_id", table_name="webhook_attempts")
    op.drop_table("webhook_attempts")
    op.drop_index("ix_webhook_outbox_job_id", table_name="webhook_outbox")
    op.drop_column("webhook_outbox", "delivered_at")
    op.drop_column("webhook_outbox", "locked_by")
    op.drop_column("webhook_outbox", "locked_until")
    op.drop_column("tenants", "webhook_secret_rotated_at")
    op.drop_column("tenants", "previous_webhook_secret")
