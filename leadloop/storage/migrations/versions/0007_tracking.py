"""tracking: clicks on tracked links (people's and mail scanners') and orders
from the conversion webhook

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 08:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('clicks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('lead_id', sa.Integer(), nullable=False),
    sa.Column('outbound_id', sa.Integer(), nullable=False),
    sa.Column('sku', sa.String(length=60), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('method', sa.String(length=10), nullable=False),
    sa.Column('user_agent', sa.Text(), nullable=True),
    sa.Column('remote', sa.String(length=64), nullable=True),
    sa.Column('scanner', sa.Boolean(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['lead_id'], ['leads.id'], name=op.f('fk_clicks_lead_id_leads'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['outbound_id'], ['outbound_messages.id'], name=op.f('fk_clicks_outbound_id_outbound_messages')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_clicks'))
    )
    with op.batch_alter_table('clicks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_clicks_lead_id'), ['lead_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_clicks_at'), ['at'], unique=False)
        batch_op.create_index('ix_clicks_outbound_at', ['outbound_id', 'at'], unique=False)
    op.create_table('orders',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.String(length=255), nullable=False),
    sa.Column('lead_id', sa.Integer(), nullable=False),
    sa.Column('amount', sa.String(length=40), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['lead_id'], ['leads.id'], name=op.f('fk_orders_lead_id_leads'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders')),
    sa.UniqueConstraint('order_id', name=op.f('uq_orders_order_id'))
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_orders_lead_id'), ['lead_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_orders_at'), ['at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_orders_at'))
        batch_op.drop_index(batch_op.f('ix_orders_lead_id'))
    op.drop_table('orders')
    with op.batch_alter_table('clicks', schema=None) as batch_op:
        batch_op.drop_index('ix_clicks_outbound_at')
        batch_op.drop_index(batch_op.f('ix_clicks_at'))
        batch_op.drop_index(batch_op.f('ix_clicks_lead_id'))
    op.drop_table('clicks')
