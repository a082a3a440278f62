"""A database migrated by a non-superuser owner, in a schema of its own, with roles.

The security tests attack it as the roles `manage.py ledger_grants` sets up
(worker, app, maintenance), as a role with no grants at all (none) and as a role
that may CREATE in the app's schema (creator), each a LOGIN role made here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "dbq_app"
KINDS = ("owner", "worker", "app", "maintenance", "none", "creator")


def server_url(role: str, dbname: str) -> str:
    """The URL of the test server's database `dbname`, as `role`."""
    settings = connection.settings_dict
    host = settings["HOST"]
    if host.startswith("/"):
        return f"postgres://{role}@/{dbname}?host={quote(host)}"
    return f"postgres://{role}@{host or '127.0.0.1'}:{settings['PORT'] or 5432}/{dbname}"


@dataclass
class OwnedDatabase:
    """A database, its roles and ways to act as each."""

    name: str
    roles: dict[str, str] = field(default_factory=dict)

    def url(self, kind: str) -> str:
        return server_url(self.roles[kind], self.name)

    def connect(self, kind: str) -> psycopg.Connection:
        return psycopg.connect(self.url(kind), autocommit=True)

    def manage(self, kind: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run manage.py (tests.settings) as a role, in the app's schema."""
        return subprocess.run(
            [sys.executable, "-m", "django", *args, "--settings=tests.settings"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": self.url(kind)},
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def superuser() -> psycopg.Connection:
    params = {k: v for k, v in connection.get_connection_params().items() if k != "context"}
    params["dbname"] = "postgres"
    return psycopg.connect(**params, autocommit=True)


def create_owned_database() -> OwnedDatabase:
    """Make the roles and the database, migrate it as the owner, run ledger_grants."""
    suffix = os.getpid()
    db = OwnedDatabase(name=f"test_dbq_owned_{suffix}")
    db.roles = {kind: f"dbq_t_{kind}_{suffix}" for kind in KINDS}
    with superuser() as conn:
        for role in db.roles.values():
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')  # test constants, not input
            conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db.name}" OWNER "{db.roles["owner"]}"')
        conn.execute(f'ALTER DATABASE "{db.name}" SET search_path = {SCHEMA}')
    with psycopg.connect(db.url("owner"), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        # Every role may look in the schema; one may also create in it, as
        # PUBLIC could in `public` before PostgreSQL 15.
        conn.execute(f"GRANT USAGE ON SCHEMA {SCHEMA} TO PUBLIC")
        conn.execute(f'GRANT CREATE ON SCHEMA {SCHEMA} TO "{db.roles["creator"]}"')
    migrated = db.manage("owner", "migrate", "--verbosity", "0")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    grants = db.manage(
        "owner",
        "ledger_grants",
        "--execute",
        "--worker",
        db.roles["worker"],
        "--app",
        db.roles["app"],
        "--maintenance",
        db.roles["maintenance"],
    )
    assert grants.returncode == 0, grants.stderr[-3000:]
    return db


def drop_owned_database(db: OwnedDatabase) -> None:
    with superuser() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
        for role in db.roles.values():
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')
