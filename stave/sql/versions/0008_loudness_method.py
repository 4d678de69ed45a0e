"""the method each asset's loudness was measured with: true BS.1770-4 LUFS (K-weighted) from now
on; the values stored before it are marked as the unweighted measure they are

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies (migrations import no application code).
CURRENT = "bs1770-4"
BEFORE = "bs1770-unweighted"


def upgrade() -> None:
    # Added with the old method as its default, so every existing row says how it was
    # measured (one catalogue update, no table rewrite); new rows get the current one.
    op.add_column(
        "audio_asset",
        sa.Column("loudness_method", sa.String(length=32), nullable=False, server_default=BEFORE),
    )
    op.alter_column("audio_asset", "loudness_method", server_default=CURRENT)


def downgrade() -> None:
    op.drop_column("audio_asset", "loudness_method")
