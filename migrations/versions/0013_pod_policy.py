"""Pod policy: tenants.pod_policy.

What a tenant's pods may reach beyond their own containers (volume types, hostPath prefixes,
service accounts, privileged containers, added capabilities, host namespaces, tolerations), as
``gateway.domain.jobs.policy.policy_document`` writes it. A key the document lacks has its
default, so existing tenants get ``'{}'``: the default policy, which allows no toleration (any
toleration was allowed before; an admin allows what a tenant needs).

A catalogue change (a constant default); a check keeps the value an object.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "tenants",
        sa.Column(
            "pod_policy",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
    )
    op.create_check_constraint(
        op.f("ck_tenants_pod_policy_object"), "tenants", "jsonb_typeof(pod_policy) = 'object'"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_tenants_pod_policy_object"), "tenants", type_="check")
    op.drop_column("tenants", "pod_policy")
