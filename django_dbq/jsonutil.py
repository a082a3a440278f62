"""JSON encoding for event payloads: orjson, with errors that name the bad value."""

from __future__ import annotations

import math
from typing import Any

import orjson

from django_dbq.exceptions import InvalidJobError


def dumps(value: Any, what: str = "value") -> str:
    """Encode value as JSON text, or raise InvalidJobError saying what cannot be stored."""
    return _encode(value, what).decode()


def encode_workspace(workspace: Any) -> bytes:
    """Encode a workspace (keys sorted, so equal workspaces encode equally)."""
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
    return encoded


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(v) for v in value)
    return False
