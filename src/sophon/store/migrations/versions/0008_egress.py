"""the egress door: each session's network settings and connectors, the users'
connectors (sealed values), and network usage per session or thread

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("network", sa.JSON, nullable=True))
        batch.add_column(sa.Column("connectors", sa.JSON, nullable=True))
    op.create_table(
        "connectors",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("value", sa.LargeBinary, nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("header", sa.String(128), nullable=True),
        sa.Column("execute", sa.Boolean, nullable=False),
        sa.Column("rules", sa.JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("user_id", "name"),
    )
    op.create_table(
        "network_usage",
        sa.Column("owner_id", sa.String(40), primary_key=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("bytes_out", sa.BigInteger, nullable=False),
        sa.Column("bytes_in", sa.BigInteger, nullable=False),
        sa.Column("connections", sa.Integer, nullable=False),
        sa.Column("denied", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("network_usage")
    op.drop_table("connectors")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("connectors")
        batch.drop_column("network")
