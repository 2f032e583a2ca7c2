"""Alembic environment: leadloop runs migrations itself, on a connection it
passes in (see ``leadloop.storage.db``), so there is no URL here."""

from alembic import context

from leadloop.storage.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `leadloop db upgrade`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
