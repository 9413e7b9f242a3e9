"""Alembic environment: runs on the connection ``router.inference_log.db.migrate`` passes."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlmodel import SQLModel

import router.auth.models
import router.evaluation.models
import router.inference_log.models  # noqa: F401

target_metadata = SQLModel.metadata
config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # plain `alembic upgrade head` with sqlalchemy.url in a config
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
        with engine.begin() as conn:
            context.configure(connection=conn, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
        return
    render_as_batch = connection.dialect.name == "sqlite"  # SQLite alters by copy
    context.configure(
        connection=connection, target_metadata=target_metadata, render_as_batch=render_as_batch
    )
    with context.begin_transaction():
        context.run_migrations()


run()
