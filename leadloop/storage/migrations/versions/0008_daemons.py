"""daemons: the daemons sharing the database, for `leadloop cluster status`

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22 09:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('daemons',
    sa.Column('id', sa.String(length=255), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('version', sa.String(length=40), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('seen_at', sa.DateTime(), nullable=False),
    sa.Column('mailboxes', sa.JSON(), nullable=False),
    sa.Column('stopped_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_daemons'))
    )
    with op.batch_alter_table('daemons', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_daemons_seen_at'), ['seen_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('daemons', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_daemons_seen_at'))
    op.drop_table('daemons')
