"""JSON encoding for event payloads: orjson, with errors that name the bad value."""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

from django_dbq.exceptions import InvalidJobError


def dumps(value: Any, what: str = "value") -> str:
    """Encode value as JSON text, or raise InvalidJobError saying what cannot be stored."""
    return _encode(value, what).decode()


def encode_workspace(workspace: Any) -> bytes:
    """Encode a workspace (keys sorted, so equal workspaces encode equally)."""
    if type(workspace) is dict and not workspace:  # most jobs': {}
        return b"{}"
    return _encode(workspace, "workspace", orjson.OPT_SORT_KEYS)


def _encode(value: Any, what: str, option: int | None = None) -> bytes:
    try:
        encoded = orjson.dumps(value, option=option)
    except TypeError as exc:
        raise InvalidJobError(
            f"The job's {what} cannot be stored as JSON: {exc}. "
            "Use only dicts with string keys, lists, strings, numbers, booleans and None."
        ) from None
    # orjson writes NaN and infinities as null; catch them rather than lose them.
    if b"null" in encoded and _has_non_finite(value):
        raise InvalidJobError(
            f"The job's {what} holds NaN or an infinite float, which JSON cannot represent. "
            "Store it as a string or None."
        )
    # PostgreSQL's jsonb refuses the NUL character: refused here, with the fix,
    # rather than by the database, which would refuse the whole statement (a
    # worker's batch of outcomes with it).
    if b"\\u0000" in encoded and _NUL.search(encoded):
        raise InvalidJobError(
            f"The job's {what} holds a NUL character (\\x00), which PostgreSQL's jsonb cannot "
            "store. Remove it, or store such data as base64 text."
        )
    return encoded


# \u0000 as orjson writes a NUL: not preceded by an escaped backslash.
_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def without_nul(text: str) -> str:
    """Text that jsonb can store: each NUL character written as the two characters \\0."""
    return text.replace("\x00", "\\0")


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(v) for v in value)
    return False
