"""The event stream in commit order: job_events.txid, the id of the transaction that wrote a row.

- job_events.txid (xid8, PostgreSQL 13+), defaulting to ``pg_current_xact_id()``, so every writer
  records it without naming it; an index on (txid, id), the event stream's order.
- Rows written before this migration get 0, a transaction id PostgreSQL never assigns: they sort
  before every later row, among themselves by id (their old stream order), so a client resuming
  from one of their ids misses nothing written since. The constant default also makes the column
  addition a catalogue change, not a rewrite of the table.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 15:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE job_events ADD COLUMN txid xid8 NOT NULL DEFAULT '0'")
    op.execute("ALTER TABLE job_events ALTER COLUMN txid SET DEFAULT pg_current_xact_id()")
    op.create_index("ix_job_events_txid_id", "job_events", ["txid", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_job_events_txid_id", table_name="job_events")
    op.drop_column("job_events", "txid")
