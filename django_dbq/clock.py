"""Times read from the database as epoch seconds: much cheaper to load than timestamp text."""

from __future__ import annotations

import datetime

from django.conf import settings
from django.utils import timezone


def from_epoch(seconds: float | None) -> datetime.datetime | None:
    """A datetime as Django would load it (aware in UTC, or naive local without USE_TZ)."""
    if seconds is None:
        return None
    try:
        moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    except (ValueError, OverflowError, OSError):
        # PostgreSQL holds times Python cannot (before the year 1, after 9999;
        # django_dbq refuses to store them, an older release did not): the
        # nearest one it can, so that no worker stops on reading one.
        moment = _EARLIEST if seconds < 0 else _LATEST
    return moment if settings.USE_TZ else timezone.make_naive(moment)


_EARLIEST = datetime.datetime.min.replace(tzinfo=datetime.UTC) + datetime.timedelta(days=1)
_LATEST = datetime.datetime.max.replace(tzinfo=datetime.UTC) - datetime.timedelta(days=1)


def from_epochs(rows: list[tuple[float]]) -> list[datetime.datetime]:
    """from_epoch for the first column of many rows (none NULL)."""
    utc, moment = datetime.UTC, datetime.datetime.fromtimestamp
    moments = [moment(seconds, tz=utc) for (seconds,) in rows]
    return moments if settings.USE_TZ else [timezone.make_naive(m) for m in moments]
