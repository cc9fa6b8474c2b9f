"""``prefect server start`` on SQLite without ``database is locked`` (``python -m flows.sqlite_server
server start ...``, what ``dsclab server`` runs when it is given no ``--database-url``).

Prefect 3.8.8 opens its SQLite write transactions ``BEGIN DEFERRED`` (``AioSqliteConfiguration
.begin_transaction``; ``IMMEDIATE`` only where a query locks rows). In WAL mode a deferred
transaction that has read and then writes after another connection committed fails at once with
``SQLITE_BUSY`` (its snapshot is stale: SQLite does not wait, whatever ``busy_timeout`` says), which
the server logs as an ``sqlite3.OperationalError: database is locked`` traceback and answers with a
503. With the default ``dsclab worker`` (two workers) and six queued runs that gave 7 tracebacks and
two failed REST calls. Here every transaction begins ``IMMEDIATE``: it takes the write lock when it
starts, waiting for it up to SQLite's busy timeout (60 s in Prefect), so writers queue instead of
failing; reads outside transactions are unchanged (WAL readers never wait). The price is that
transactions of the server's process run one at a time, which a team server's load (a few workers,
runs that report every few seconds) leaves far from its limit; more workers than that, or several
server processes: use PostgreSQL (``--database-url``).

The rest is Prefect's own command line, unchanged.
"""
from __future__ import annotations

import contextlib
import sys


def patch() -> None:
    """Every transaction of Prefect's SQLite configuration begins IMMEDIATE (see the module)."""
    from prefect.server.database import configurations as c

    @contextlib.asynccontextmanager
    async def begin_transaction(self, session, with_for_update: bool = False):
        token = c.SQLITE_BEGIN_MODE.set("IMMEDIATE")
        try:
            async with session.begin() as transaction:
                yield transaction
        finally:
            c.SQLITE_BEGIN_MODE.reset(token)

    c.AioSqliteConfiguration.begin_transaction = begin_transaction


if __name__ == "__main__":
    patch()
    from prefect.cli import app

    sys.argv[0] = "prefect"
    app()
