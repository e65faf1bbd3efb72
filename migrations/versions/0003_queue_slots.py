"""Queue slots instead of a per-tenant counter row for max_queued_jobs.

The counter of 0001 was exact, but every submit of a tenant updated the same tenants row and held
its lock through commit, so one tenant's submits ran one at a time. A slot is an entry in a partial
unique index on (tenant, queue_slot) over queued jobs: a submit takes a free slot below
max_queued_jobs, and two submits only meet if they pick the same slot.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The counter of 0001, restored by a downgrade (migrations stay self-contained: copied, not imported).
COUNT_QUEUED_FUNCTION = """
CREATE FUNCTION muster_count_queued() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    over_cap boolean;
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.state = 'queued' THEN
            UPDATE tenants SET queued_jobs = queued_jobs + 1 WHERE name = NEW.tenant
                RETURNING queued_jobs > max_queued_jobs INTO over_cap;
            IF over_cap THEN
                RAISE EXCEPTION 'tenant % has reached its limit of queued jobs', NEW.tenant
                    USING ERRCODE = 'MU429';
            END IF;
        END IF;
    ELSIF TG_OP = 'UPDATE' THEN
        IF OLD.state = 'queued' AND NEW.state <> 'queued' THEN
            UPDATE tenants SET queued_jobs = queued_jobs - 1 WHERE name = OLD.tenant;
        ELSIF OLD.state <> 'queued' AND NEW.state = 'queued' THEN
            -- a requeue after an eviction is never refused: the job was already accepted
            UPDATE tenants SET queued_jobs = queued_jobs + 1 WHERE name = NEW.tenant;
        END IF;
    ELSIF OLD.state = 'queued' THEN
        UPDATE tenants SET queued_jobs = queued_jobs - 1 WHERE name = OLD.tenant;
    END IF;
    RETURN NULL;
END;
$$
"""
COUNT_QUEUED_TRIGGER = """
CREATE TRIGGER jobs_count_queued AFTER INSERT OR DELETE OR UPDATE OF state ON jobs
FOR EACH ROW EXECUTE FUNCTION muster_count_queued()
"""


def upgrade() -> None:
    op.execute("DROP TRIGGER jobs_count_queued ON jobs")
    op.execute("DROP FUNCTION muster_count_queued()")
    op.drop_constraint(op.f("ck_tenants_quota_non_negative"), "tenants", type_="check")
    op.drop_column("tenants", "queued_jobs")
    op.create_check_constraint(
        op.f("ck_tenants_quota_non_negative"),
        "tenants",
        "quota_cpu_millis >= 0 AND quota_memory_bytes >= 0 AND quota_gpu_shares >= 0 "
        "AND max_running_jobs >= 0 AND max_queued_jobs >= 0",
    )
    op.add_column("jobs", sa.Column("queue_slot", sa.Integer(), nullable=True))
    op.create_check_constraint(op.f("ck_jobs_queue_slot_non_negative"), "jobs", "queue_slot >= 0")
    # Jobs already waiting keep their place: slots 0, 1, 2, ... in submit order.
    op.execute(
        """
        UPDATE jobs j SET queue_slot = s.slot FROM (
            SELECT id, row_number() OVER (PARTITION BY tenant ORDER BY seq) - 1 AS slot
            FROM jobs WHERE state = 'queued'
        ) s WHERE j.id = s.id
        """
    )
    op.create_index(
        "uq_jobs_queue_slot",
        "jobs",
        ["tenant", "queue_slot"],
        unique=True,
        postgresql_where=sa.text("state = 'queued' AND queue_slot IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_jobs_queue_slot", table_name="jobs")
    op.drop_constraint(op.f("ck_jobs_queue_slot_non_negative"), "jobs", type_="check")
    op.drop_column("jobs", "queue_slot")
    op.drop_constraint(op.f("ck_tenants_quota_non_negative"), "tenants", type_="check")
    op.add_column(
        "tenants",
        sa.Column("queued_jobs", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_tenants_quota_non_negative"),
        "tenants",
        "quota_cpu_millis >= 0 AND quota_memory_bytes >= 0 AND quota_gpu_shares >= 0 "
        "AND max_running_jobs >= 0 AND max_queued_jobs >= 0 AND queued_jobs >= 0",
    )
    op.execute(
        "UPDATE tenants t SET queued_jobs = "
        "(SELECT count(*) FROM jobs j WHERE j.tenant = t.name AND j.state = 'queued')"
    )
    op.execute(COUNT_QUEUED_FUNCTION)
    op.execute(COUNT_QUEUED_TRIGGER)
