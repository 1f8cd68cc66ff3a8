"""session limits, gateway tokens, usage records

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("max_turns", sa.Integer, nullable=True))
        batch.add_column(sa.Column("max_budget_usd", sa.Float, nullable=True))
        batch.add_column(sa.Column("gateway_token_hash", sa.String(64), nullable=True))
        batch.create_unique_constraint("uq_sessions_gateway_token_hash", ["gateway_token_hash"])
    op.create_table(
        "usage_records",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("session_id", sa.String(40), nullable=True, index=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("input_tokens", sa.Integer, nullable=False),
        sa.Column("output_tokens", sa.Integer, nullable=False),
        sa.Column("cache_read_tokens", sa.Integer, nullable=False),
        sa.Column("cache_write_tokens", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("usage_records")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_constraint("uq_sessions_gateway_token_hash")
        batch.drop_column("gateway_token_hash")
        batch.drop_column("max_budget_usd")
        batch.drop_column("max_turns")
