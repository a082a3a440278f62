"""Periodic jobs' way into the ledger: the due ticks of a schedule, each enqueued once.

Every worker that finds a tick due calls dbq_enqueue_ticks_v1 (sql/schedules.sql)
with it; the schedule's row lock makes one call enqueue it and the others nothing.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from django.db import DEFAULT_DB_ALIAS

from django_dbq.events.append import bound_cursor
from django_dbq.sqlfiles import bind, load_queries


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


def append_ticks(
    name: str, ticks: Sequence[dict[str, Any]], using: str = DEFAULT_DB_ALIAS
) -> list[tuple[uuid.UUID, datetime.datetime]]:
    """Enqueue the ticks ({tick, job_id, payload}) of schedule `name` that no worker has yet.

    Returns (job id, tick) of each job created; none when another worker
    enqueued those ticks first. Afterwards the schedule's last tick is at least
    the latest one given.
    """
    query = bind(
        load_queries("django_dbq.events")["schedules_enqueue_ticks"],
        {"name": name, "ticks": orjson.dumps(list(ticks)).decode()},
    )
    with bound_cursor(using) as cursor:
        cursor.execute(*query)
        return [(job_id, _utc(tick)) for job_id, tick in cursor.fetchall()]


def schedule_cursors(
    names: Sequence[str], using: str = DEFAULT_DB_ALIAS
) -> dict[str, datetime.datetime]:
    """For each schedule named that a worker has seen: the time after which its next tick is due.

    A schedule no worker has seen is registered first (it starts from now), so
    that ticks missed while no worker runs are found when one starts again.
    """
    cursors = _read_cursors(names, using)
    missing = [name for name in names if name not in cursors]
    for name in missing:
        append_ticks(name, [], using)
    if missing:
        cursors = _read_cursors(names, using)
    return cursors


def _read_cursors(names: Sequence[str], using: str) -> dict[str, datetime.datetime]:
    query = bind(load_queries("django_dbq.events")["schedules_cursors"], {"names": list(names)})
    with bound_cursor(using) as cursor:
        cursor.execute(*query)
        return {name: _utc(seconds) for name, seconds in cursor.fetchall()}
