"""Alembic environment: runs on the connection that `chatapi.store.migrate` hands over."""

from alembic import context

from chatapi.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("chatapi migrations run through `chatapi db upgrade` or server start")

context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
