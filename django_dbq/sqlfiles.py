"""Loading SQL that lives in .sql files beside the code that uses it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from psycopg import sql

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def read_sql(package: str, filename: str) -> str:
    """Return the text of a .sql file shipped in package."""
    return resources.files(package).joinpath(filename).read_text(encoding="utf-8")


SCHEMA_MARK = "@schema@"
SCHEMA_LITERAL_MARK = "@schema_literal@"


def schema_of(cursor: Any) -> str:
    """The schema the app's tables live in: the connection's current schema."""
    cursor.execute("SELECT current_schema()")
    schema = cursor.fetchone()[0]
    if schema is None or "'" in schema:
        raise ValueError(
            f"django_dbq needs a current schema without quote characters, not {schema!r}; "
            "set the connection's search_path to the schema that holds the tables."
        )
    return schema


def with_schema(text: str, schema: str, connection: Any) -> str:
    """The SQL text with @schema@ as the schema's quoted identifier, @schema_literal@ as its name."""
    pieces: list[sql.Composable] = []
    for n, chunk in enumerate(text.split(SCHEMA_LITERAL_MARK)):
        if n:
            pieces.append(sql.Literal(schema))
        for m, part in enumerate(chunk.split(SCHEMA_MARK)):
            if m:
                pieces.append(sql.Identifier(schema))
            pieces.append(sql.SQL(part))
    return sql.Composed(pieces).as_string(connection)


_FUNCTION = re.compile(rf"CREATE OR REPLACE FUNCTION {SCHEMA_MARK}\.(\w+)\(")


def install_sql(schema_editor: Any, package: str, filename: str) -> None:
    """Run a .sql file of functions in a migration, in the schema of the app's tables.

    No function it installs stays executable by PUBLIC, and one it creates by
    no role but its owner, whatever default privileges the owner has set
    (ALTER DEFAULT PRIVILEGES ... GRANT EXECUTE ON FUNCTIONS): ledger_grants,
    or the migration itself for a function that succeeds another, grants each
    role its own. A function it replaces keeps the grants it had.
    """
    text = read_sql(package, filename)
    names = _FUNCTION.findall(text)
    with schema_editor.connection.cursor() as cursor:
        schema = schema_of(cursor)
        existing = set(_signatures(cursor, schema, names))
        schema_editor.execute(with_schema(text, schema, cursor.connection), params=None)
        for signature in _signatures(cursor, schema, names):
            cursor.execute(f"REVOKE EXECUTE ON FUNCTION {signature} FROM PUBLIC")
            if signature not in existing:
                cursor.execute(_GRANTEES_BUT_OWNER, [signature])
                for (role,) in cursor.fetchall():
                    cursor.execute(
                        sql.SQL("REVOKE EXECUTE ON FUNCTION {} FROM {}").format(
                            sql.SQL(signature), sql.Identifier(role)
                        )
                    )


# Roles other than its owner that may execute a function (PUBLIC aside).
_GRANTEES_BUT_OWNER = """
SELECT r.rolname
FROM pg_catalog.pg_proc p, LATERAL aclexplode(p.proacl) a
JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
WHERE p.oid = %s::regprocedure AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
"""


def drop_sql(schema_editor: Any, package: str, filename: str) -> None:
    """Drop every function a .sql file creates (the reverse of install_sql)."""
    text = read_sql(package, filename)
    with schema_editor.connection.cursor() as cursor:
        schema = schema_of(cursor)
        for signature in _signatures(cursor, schema, _FUNCTION.findall(text)):
            cursor.execute(f"DROP FUNCTION IF EXISTS {signature}")


def _signatures(cursor: Any, schema: str, names: list[str]) -> list[str]:
    # regprocedure's text is the function's schema-qualified, quoted signature.
    cursor.execute(
        "SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p"
        " WHERE p.pronamespace = %s::regnamespace AND p.proname = ANY(%s) ORDER BY p.oid DESC",
        [sql.Identifier(schema).as_string(cursor.connection), names],
    )
    return [row[0] for row in cursor.fetchall()]


@cache
def load_queries(package: str, filename: str = "queries.sql") -> dict[str, str]:
    """Return the named queries of a .sql file: blocks that start with '-- name: x'."""
    parts = _NAME.split(read_sql(package, filename))
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def bind(sql: str, params: Mapping[str, Any] | None) -> tuple[str, list[Any] | None]:
    """The query with positional placeholders, and its parameters in their order.

    The .sql files name their parameters (%(name)s) for the reader; they are sent
    positionally so that a query still runs when something prepends a positional
    parameter of its own, as pgtrigger.ignore() does to every query inside it
    (psycopg cannot mix the two styles).
    """
    if params is None:
        return sql, None
    text, names = _positional(sql)
    return text, [params[name] for name in names]


def positional_sql(sql: str) -> str:
    """The query with positional placeholders (its parameters are then given in order)."""
    return _positional(sql)[0]


@cache
def _positional(sql: str) -> tuple[str, tuple[str, ...]]:
    return _PLACEHOLDER.sub("%s", sql), tuple(_PLACEHOLDER.findall(sql))
