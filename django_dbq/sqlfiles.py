"""Loading SQL that lives in .sql files beside the code that uses it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def read_sql(package: str, filename: str) -> str:
    """Return the text of a .sql file shipped in package."""
    return resources.files(package).joinpath(filename).read_text(encoding="utf-8")


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


@cache
def _positional(sql: str) -> tuple[str, tuple[str, ...]]:
    return _PLACEHOLDER.sub("%s", sql), tuple(_PLACEHOLDER.findall(sql))
