"""Read queries run at once on several connections that all see one snapshot (Postgres).

The evaluator's aggregates are independent scans (per-unit error sums of each arm,
per-unit thumbs, latency samples and votes): one after the other they add up, at once they
take as long as the slowest. Postgres runs each connection in a backend process of its own.

Postgres: a lead connection opens a REPEATABLE READ transaction and exports its snapshot
(``pg_export_snapshot``); each worker imports it (``SET TRANSACTION SNAPSHOT``), as
``pg_dump --jobs`` does, so every query counts the same committed rows. Workers also turn
JIT off (compiling these plans costs 0.1-0.4 s and saves less) and give sorts more memory
than the 4 MB default, which spilled the ratings' sort to disk.

SQLite: the queries run one after the other on one connection, in the caller's thread.
Concurrent readers gained nothing when measured (1M rows, 2 cores): the SQLite that
Python links here (Debian's 3.40, built without the lookaside allocator and with memory
statistics on) takes one process-wide mutex for every allocation. Each query reads the
WAL snapshot of its own first step, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

__all__ = ["Submit", "concurrent_reads"]

T = TypeVar("T")
#: ``submit(query)`` runs ``query(connection)`` on a worker; its future.
Submit = Callable[[Callable[[Connection], Any]], Future[Any]]

_WORKER_SETTINGS = ("SET LOCAL jit = off", "SET LOCAL work_mem = '64MB'")


@contextmanager
def concurrent_reads(engine: Engine, workers: int) -> Iterator[Submit]:
    """``with concurrent_reads(engine, 3) as submit: f = submit(query)``; every query sees
    the same snapshot (Postgres). Leaving the block waits for all of them."""
    if engine.dialect.name != "postgresql":
        with engine.connect() as conn:
            yield lambda query: _done(query, conn)
        return
    with engine.connect() as lead:
        lead = lead.execution_options(isolation_level="REPEATABLE READ")
        lead.begin()
        snapshot = lead.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()

        def run(query: Callable[[Connection], T]) -> T:
            with engine.connect() as conn:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    # Must come first in the transaction; the lead's stays open meanwhile.
                    conn.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                    for setting in _WORKER_SETTINGS:
                        conn.exec_driver_sql(setting)
                    return query(conn)

        # The pool is left (every query done) before the lead's transaction ends.
        with ThreadPoolExecutor(workers, thread_name_prefix="canary-aggregate") as pool:
            yield lambda query: pool.submit(run, query)


def _done(query: Callable[[Connection], T], conn: Connection) -> Future[T]:
    """``query(conn)`` run now, as a finished future (its error raised by ``result``)."""
    future: Future[T] = Future()
    try:
        future.set_result(query(conn))
    except Exception as exc:
        future.set_exception(exc)
    return future
