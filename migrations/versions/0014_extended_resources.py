"""Extended resources: placements.extended and tenants.quota_extended.

A placement holds extended resources (``rdma/hca``, ``hugepages-2Mi``...) by name:
``{"rdma/hca": 1}``, amounts in whole units (bytes for hugepages and ephemeral storage). A
tenant's quota limits the extended resources it names, ``{"rdma/hca": 8}``; a name it does not
list is not limited. Both default to ``'{}'``: existing placements hold none, existing quotas
limit none. A catalogue change (constant defaults); checks keep both values objects.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 15:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (("placements", "extended"), ("tenants", "quota_extended"))


def upgrade() -> None:
    for table, column in _COLUMNS:
        op.add_column(
            table,
            sa.Column(
                column,
                postgresql.JSONB(astext_type=sa.Text()),
                server_default=sa.text("'{}'::jsonb"),
                nullable=False,
            ),
        )
        op.create_check_constraint(
            op.f(f"ck_{table}_{column}_object"), table, f"jsonb_typeof({column}) = 'object'"
        )


def downgrade() -> None:
    for table, column in reversed(_COLUMNS):
        op.drop_constraint(op.f(f"ck_{table}_{column}_object"), table, type_="check")
        op.drop_column(table, column)
