"""conversation follow-ups share the enrollment row: the answer they follow

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 03:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('cadence_enrollments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('answer_outbound_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f('fk_cadence_enrollments_answer_outbound_id_outbound_messages'),
            'outbound_messages', ['answer_outbound_id'], ['id'],
        )


def downgrade() -> None:
    with op.batch_alter_table('cadence_enrollments', schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f('fk_cadence_enrollments_answer_outbound_id_outbound_messages'),
            type_='foreignkey',
        )
        batch_op.drop_column('answer_outbound_id')
