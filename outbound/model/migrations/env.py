"""Alembic environment: the engine comes from `outbound.model.db.alembic_config`."""

from alembic import context

from outbound.model.tables import Base

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite needs batch mode for ALTER
        compare_type=True,
    )
    context.run_migrations()
