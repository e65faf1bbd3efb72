"""Cohorts: tenants that lend each other the quota they leave idle.

- cohorts: a name (a DNS label, like a tenant's), a description, when it was created and changed.
- tenants.cohort: the cohort the tenant belongs to (none: NULL), a foreign key with no cascade,
  so a cohort with members cannot be deleted; indexed, to find a cohort's members.
- tenants.borrowing_limit_* and lending_limit_* per quota resource (cpu_millis, memory_bytes,
  gpu_shares): how far above its nominal quota the tenant may go, and how much of its nominal
  quota it lends out (NULL: no limit). Never negative, and only a member of a cohort has any.
- audit_log.cohort: a change to a cohort is audited like one to a tenant, under the cohort's
  name; an entry names either a tenant or a cohort, so audit_log.tenant may now be NULL.

Every new column is nullable without a default, so existing tenants are in no cohort and the
additions are catalogue changes, not rewrites. The downgrade drops the cohorts' audit entries
(a tenant-only audit log cannot hold them) with everything else this revision added.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RESOURCES = ("cpu_millis", "memory_bytes", "gpu_shares")
LIMIT_COLUMNS = tuple(
    f"{kind}_limit_{resource}" for kind in ("borrowing", "lending") for resource in RESOURCES
)


def upgrade() -> None:
    op.create_table(
        "cohorts",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("description", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "name ~ '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'", name=op.f("ck_cohorts_name_dns_label")
        ),
        sa.CheckConstraint(
            "length(description) <= 1024", name=op.f("ck_cohorts_description_length")
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_cohorts")),
    )
    op.add_column("tenants", sa.Column("cohort", sa.String(length=63), nullable=True))
    for column in LIMIT_COLUMNS:
        op.add_column("tenants", sa.Column(column, sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        op.f("fk_tenants_cohort_cohorts"), "tenants", "cohorts", ["cohort"], ["name"]
    )
    op.create_index("ix_tenants_cohort", "tenants", ["cohort"], unique=False)
    op.create_check_constraint(
        op.f("ck_tenants_cohort_limits_non_negative"),
        "tenants",
        " AND ".join(f"{column} >= 0" for column in LIMIT_COLUMNS),
    )
    op.create_check_constraint(
        op.f("ck_tenants_cohort_limits_need_a_cohort"),
        "tenants",
        f"cohort IS NOT NULL OR num_nonnulls({', '.join(LIMIT_COLUMNS)}) = 0",
    )
    op.add_column("audit_log", sa.Column("cohort", sa.String(length=63), nullable=True))
    op.alter_column("audit_log", "tenant", existing_type=sa.String(length=63), nullable=True)
    op.create_check_constraint(
        op.f("ck_audit_log_one_subject"), "audit_log", "num_nonnulls(tenant, cohort) = 1"
    )
    op.create_index("ix_audit_log_cohort_id", "audit_log", ["cohort", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_audit_log_cohort_id", table_name="audit_log")
    op.drop_constraint(op.f("ck_audit_log_one_subject"), "audit_log", type_="check")
    op.execute("DELETE FROM audit_log WHERE tenant IS NULL")
    op.alter_column("audit_log", "tenant", existing_type=sa.String(length=63), nullable=False)
    op.drop_column("audit_log", "cohort")
    op.drop_constraint(op.f("ck_tenants_cohort_limits_need_a_cohort"), "tenants", type_="check")
    op.drop_constraint(op.f("ck_tenants_cohort_limits_non_negative"), "tenants", type_="check")
    op.drop_index("ix_tenants_cohort", table_name="tenants")
    op.drop_constraint(op.f("fk_tenants_cohort_cohorts"), "tenants", type_="foreignkey")
    for column in reversed(LIMIT_COLUMNS):
        op.drop_column("tenants", column)
    op.drop_column("tenants", "cohort")
    op.drop_table("cohorts")
