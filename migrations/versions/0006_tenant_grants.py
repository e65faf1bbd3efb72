"""Admin-managed roles: a group or a single user gets a role in a tenant.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 15:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenant_grants",
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("kind IN ('group', 'user')", name=op.f("ck_tenant_grants_kind_known")),
        sa.CheckConstraint(
            "role IN ('viewer', 'submitter', 'tenant-admin')",
            name=op.f("ck_tenant_grants_role_known"),
        ),
        sa.CheckConstraint(
            "length(name) BETWEEN 1 AND 256", name=op.f("ck_tenant_grants_name_length")
        ),
        sa.ForeignKeyConstraint(
            ["tenant"],
            ["tenants.name"],
            name=op.f("fk_tenant_grants_tenant_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant", "kind", "name", name=op.f("pk_tenant_grants")),
    )


def downgrade() -> None:
    op.drop_table("tenant_grants")
