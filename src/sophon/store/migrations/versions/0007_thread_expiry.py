"""thread expiry and execution retention: each thread's last use, and an index on the
executions' age

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("threads") as batch:
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    # A thread from before counts as last used now: none expires on the upgrade.
    op.execute(sa.text("UPDATE threads SET last_used_at = CURRENT_TIMESTAMP"))
    op.create_index("ix_executions_created_at", "executions", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_executions_created_at", table_name="executions")
    with op.batch_alter_table("threads") as batch:
        batch.drop_column("last_used_at")
