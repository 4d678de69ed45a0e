"""Query results as Arrow record batches, through the ADBC PostgreSQL driver.

The driver runs a query as `COPY … TO STDOUT (FORMAT binary)` and decodes the rows in C++, so
PostgreSQL formats no timestamps, Python touches no row and nothing is parsed back from text.
Archival reads every row it writes through this.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy.engine import Engine

from stave.infra.db import psycopg_dsn
from stave.infra.errors import DatabaseUnavailable
from stave.infra.pgraw import inline


class ArrowSource:
    """One ADBC connection for many queries. Opening one loads the server's type catalogue
    (about 30 ms): a run opens one for all its reads. The driver manager's own API, not its
    DB-API module, which imports pyarrow.dataset and pandas with it (0.2 s)."""

    def __init__(self, engine: Engine, *, who: str = "stave", aftermath: str = "") -> None:
        """`who` and `aftermath` frame a failure's one line: "archive: reading rows from
        PostgreSQL failed: <libpq's reason>; nothing was deleted"."""
        # Lazy: the driver, pyarrow with it, stays off the CLI's start-up path.
        import adbc_driver_manager
        import adbc_driver_postgresql

        self._engine = engine
        self._who, self._aftermath = who, aftermath
        dsn = psycopg_dsn(engine.url.render_as_string(hide_password=False))
        with self._unavailable_as_one_line():
            self._database = adbc_driver_postgresql.connect(dsn)
            try:
                self._connection = adbc_driver_manager.AdbcConnection(self._database)
            except BaseException:
                self._database.close()
                raise

    def __enter__(self) -> ArrowSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._connection.close()
        self._database.close()

    def batches(self, sql: str, params: dict[str, Any]) -> Iterator[Any]:
        """The rows of `sql` (with `:name` parameters), a record batch at a time."""
        import adbc_driver_manager
        import pyarrow as pa

        # Literal values, not bound parameters: the driver reads a bound statement's rows
        # through a prepared statement, row by row; an unbound one through COPY.
        statement = adbc_driver_manager.AdbcStatement(self._connection)
        try:
            with self._unavailable_as_one_line():
                statement.set_sql_query(inline(self._engine, sql, params))
                stream, _ = statement.execute_query()
                yield from pa.RecordBatchReader.from_stream(stream)
        finally:
            statement.close()

    @contextlib.contextmanager
    def _unavailable_as_one_line(self) -> Iterator[None]:
        """The driver's connection failures (server down, refused, dropped mid-read) as
        `DatabaseUnavailable` with libpq's first line; its other errors are bugs and stay as
        they are."""
        import adbc_driver_manager

        try:
            yield
        except adbc_driver_manager.OperationalError as err:
            detail = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
            after = f"; {self._aftermath}" if self._aftermath else ""
            raise DatabaseUnavailable(
                f"{self._who}: reading rows from PostgreSQL failed: {detail}{after}"
            ) from err
