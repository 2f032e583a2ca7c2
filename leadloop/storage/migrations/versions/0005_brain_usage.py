"""brain usage: tokens per call and per lead, for budgets and costs

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 03:40:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('brain_usage',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('brain', sa.String(length=30), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=True),
    sa.Column('lead_id', sa.Integer(), nullable=True),
    sa.Column('inbound_id', sa.Integer(), nullable=True),
    sa.Column('calls', sa.Integer(), nullable=False),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.String(length=30), nullable=False),
    sa.ForeignKeyConstraint(['lead_id'], ['leads.id'], name=op.f('fk_brain_usage_lead_id_leads'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['inbound_id'], ['inbound_messages.id'], name=op.f('fk_brain_usage_inbound_id_inbound_messages'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_brain_usage'))
    )
    with op.batch_alter_table('brain_usage', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_brain_usage_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_brain_usage_lead_id'), ['lead_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('brain_usage', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_brain_usage_lead_id'))
        batch_op.drop_index(batch_op.f('ix_brain_usage_at'))
    op.drop_table('brain_usage')
