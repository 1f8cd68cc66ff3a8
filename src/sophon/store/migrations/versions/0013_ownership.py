"""ownership: the node that runs each session's and thread's box (sophon/cluster/), the
node each running execution is on, and whether a node is being drained

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("sessions", "threads", "executions"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("node_id", sa.String(40), nullable=True))
            batch.create_index(f"ix_{table}_node_id", ["node_id"])
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("draining", sa.Boolean, nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("draining")
    for table in ("executions", "threads", "sessions"):
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_node_id")
            batch.drop_column("node_id")
