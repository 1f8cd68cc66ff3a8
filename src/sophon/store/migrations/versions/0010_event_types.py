"""an index of a session's events by type (its checkpoints, its turns), so listing them
reads those rows, not the whole log

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_session_type", "events", ["session_id", "type", "seq"])


def downgrade() -> None:
    op.drop_index("ix_events_session_type", "events")
