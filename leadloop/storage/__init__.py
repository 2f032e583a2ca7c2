"""Storage: SQLAlchemy models, repository queries and Alembic migrations.

Knows nothing of mail protocols or lead policy.
"""
