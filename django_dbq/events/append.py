"""The append API: the only code that inserts JobEvent rows."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from django_dbq.exceptions import JobGoneError
from django_dbq.sqlfiles import load_queries


class Appended(NamedTuple):
    """What the ledger recorded for one appended event."""

    job_id: uuid.UUID
    version: int
    at: datetime


def _queries() -> dict[str, str]:
    return load_queries("django_dbq.events")


def append_created(
    job_ids: Sequence[uuid.UUID], payloads: Sequence[str], using: str = DEFAULT_DB_ALIAS
) -> dict[uuid.UUID, datetime]:
    """Append `created` events (payloads are JSON text) in one statement; return each job's time."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            _queries()["events_insert_created"],
            {"job_ids": list(job_ids), "payloads": list(payloads)},
        )
        return dict(cursor.fetchall())


def append_events(
    events: Sequence[tuple[uuid.UUID, str, str]], using: str = DEFAULT_DB_ALIAS
) -> list[Appended]:
    """Append (job_id, kind, payload JSON) events, at most one per job, in one statement."""
    job_ids = [job_id for job_id, _, _ in events]
    # Atomic: when one job is missing, the events of the others are not kept either.
    with transaction.atomic(using), connections[using].cursor() as cursor:
        cursor.execute(
            _queries()["events_append"],
            {
                "job_ids": job_ids,
                "kinds": [kind for _, kind, _ in events],
                "payloads": [payload for _, _, payload in events],
            },
        )
        appended = [Appended(*row) for row in cursor.fetchall()]
        if len(appended) != len(events):
            missing = set(job_ids) - {row.job_id for row in appended}
            raise JobGoneError(
                f"No job with id {', '.join(map(str, sorted(missing)))} in the projection; "
                "it was never created or has been removed by delete_old_jobs."
            )
    return appended


def delete_old_jobs(created_before: datetime, using: str = DEFAULT_DB_ALIAS) -> int:
    """Remove the whole histories of COMPLETE and FAILED jobs created before a time."""
    with connections[using].cursor() as cursor:
        cursor.execute(_queries()["events_delete_old_jobs"], {"created_before": created_before})
        return cursor.fetchone()[0]
