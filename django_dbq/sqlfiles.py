"""Loading SQL that lives in .sql files beside the code that uses it."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def read_sql(package: str, filename: str) -> str:
    """Return the text of a .sql file shipped in package."""
    return resources.files(package).joinpath(filename).read_text(encoding="utf-8")


@cache
def load_queries(package: str, filename: str = "queries.sql") -> dict[str, str]:
    """Return the named queries of a .sql file: blocks that start with '-- name: x'."""
    parts = _NAME.split(read_sql(package, filename))
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}
