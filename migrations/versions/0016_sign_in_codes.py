"""Dashboard sign-in codes spent: sign_in_codes.

A `muster ui` link carries a one-time code (a 60-second token of the local issuer, audience
``muster-ui-sign-in``). The gateway that redeems it inserts the code's ``jti`` here first; the
primary key makes a second redemption, on any replica, find the row and be refused. Rows are kept
until a day after the code expired (each redemption deletes older ones), long after the code
itself is refused for its age.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 17:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sign_in_codes",
        sa.Column("jti", sa.Text(), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "spent_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index("ix_sign_in_codes_expires_at", "sign_in_codes", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_sign_in_codes_expires_at", table_name="sign_in_codes")
    op.drop_table("sign_in_codes")
