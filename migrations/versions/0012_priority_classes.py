"""Priority classes: admins define them and grant each tenant the ones it may use.

- priority_classes: a name (a DNS label), a value within the job priority range (-1000 to 1000,
  written out: a migration must not change if the code's range ever does), whether its jobs may
  be preempted, a description, when it was created and changed.
- tenant_priority_classes: the classes each tenant may use. Its foreign key to the tenant
  cascades (a deleted tenant's grants go with it); the one to the class does not, so a class
  still granted to a tenant cannot be deleted. Indexed by class, to find a class's tenants.
- jobs.priority_class: the class a job was submitted with (NULL: none; no foreign key, so a
  finished job keeps the name of a class deleted since). jobs.preemptible: whether the job may
  be preempted, resolved from its class when it was submitted, as its priority is (a later change
  to the class changes only new jobs); a job without a class is preemptible. A partial index
  finds the live jobs of a class (which keep the class from being deleted) without a scan.
- audit_log.priority_class: a change to a class is audited under its name; an entry now names
  one of a tenant, a cohort or a priority class.

The jobs columns are a nullable column and a constant default, so existing jobs (none of which
has a class, all preemptible) are not rewritten. The downgrade drops the classes' audit entries
(the older audit log cannot hold them) with everything else this revision added.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE_STATES = "'queued', 'admitted', 'running'"


def _timestamp(name: str) -> sa.Column[datetime]:
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "priority_classes",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.Column("preemptible", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("description", sa.Text(), server_default=sa.text("''"), nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.CheckConstraint(
            "name ~ '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'",
            name=op.f("ck_priority_classes_name_dns_label"),
        ),
        sa.CheckConstraint(
            "value BETWEEN -1000 AND 1000", name=op.f("ck_priority_classes_value_in_range")
        ),
        sa.CheckConstraint(
            "length(description) <= 1024", name=op.f("ck_priority_classes_description_length")
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_priority_classes")),
    )
    op.create_table(
        "tenant_priority_classes",
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("priority_class", sa.String(length=63), nullable=False),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(
            ["tenant"],
            ["tenants.name"],
            name=op.f("fk_tenant_priority_classes_tenant_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["priority_class"],
            ["priority_classes.name"],
            name=op.f("fk_tenant_priority_classes_priority_class_priority_classes"),
        ),
        sa.PrimaryKeyConstraint(
            "tenant", "priority_class", name=op.f("pk_tenant_priority_classes")
        ),
    )
    op.create_index(
        "ix_tenant_priority_classes_priority_class",
        "tenant_priority_classes",
        ["priority_class"],
        unique=False,
    )
    op.add_column("jobs", sa.Column("priority_class", sa.Text(), nullable=True))
    op.add_column(
        "jobs",
        sa.Column("preemptible", sa.Boolean(), server_default=sa.text("true"), nullable=False),
    )
    op.create_index(
        "ix_jobs_live_priority_class",
        "jobs",
        ["priority_class"],
        unique=False,
        postgresql_where=sa.text(f"priority_class IS NOT NULL AND state IN ({LIVE_STATES})"),
    )
    op.add_column("audit_log", sa.Column("priority_class", sa.String(length=63), nullable=True))
    op.drop_constraint(op.f("ck_audit_log_one_subject"), "audit_log", type_="check")
    op.create_check_constraint(
        op.f("ck_audit_log_one_subject"),
        "audit_log",
        "num_nonnulls(tenant, cohort, priority_class) = 1",
    )
    op.create_index(
        "ix_audit_log_priority_class_id", "audit_log", ["priority_class", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_audit_log_priority_class_id", table_name="audit_log")
    op.drop_constraint(op.f("ck_audit_log_one_subject"), "audit_log", type_="check")
    op.execute("DELETE FROM audit_log WHERE priority_class IS NOT NULL")
    op.create_check_constraint(
        op.f("ck_audit_log_one_subject"), "audit_log", "num_nonnulls(tenant, cohort) = 1"
    )
    op.drop_column("audit_log", "priority_class")
    op.drop_index("ix_jobs_live_priority_class", table_name="jobs")
    op.drop_column("jobs", "preemptible")
    op.drop_column("jobs", "priority_class")
    op.drop_index("ix_tenant_priority_classes_priority_class", table_name="tenant_priority_classes")
    op.drop_table("tenant_priority_classes")
    op.drop_table("priority_classes")
