"""Operators' actions on jobs: cancel, requeue and release, each one statement of events."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from django_dbq.events.append import refusing_held_keys
from django_dbq.sqlfiles import bind, load_queries

CHUNK = 1000


def _act(query: str, job_ids: Iterable[uuid.UUID], reason: str, using: str) -> dict[uuid.UUID, str]:
    ids, done = list(job_ids), {}
    # Atomic: one refused job (a key held by another) leaves the others unchanged too.
    with (
        refusing_held_keys("This requeue"),
        transaction.atomic(using),
        connections[using].cursor() as cursor,
    ):
        for start in range(0, len(ids), CHUNK):
            params = {"job_ids": ids[start : start + CHUNK], "reason": reason}
            cursor.execute(*bind(load_queries("django_dbq.events")[query], params))
            done.update(cursor.fetchall())
    return done


def cancel_jobs(
    job_ids: Iterable[uuid.UUID], reason: str = "", using: str = DEFAULT_DB_ALIAS
) -> dict[uuid.UUID, str]:
    """Cancel jobs (waiting: `cancelled`; running: `cancel_requested`); return id -> event kind."""
    return _act("jobs_cancel", job_ids, reason, using)


def requeue_jobs(
    job_ids: Iterable[uuid.UUID], reason: str = "", using: str = DEFAULT_DB_ALIAS
) -> dict[uuid.UUID, str]:
    """Requeue FAILED and CANCELLED jobs; return id -> event kind for those requeued."""
    return _act("jobs_requeue", job_ids, reason, using)


def release_jobs(
    job_ids: Iterable[uuid.UUID], reason: str = "", using: str = DEFAULT_DB_ALIAS
) -> dict[uuid.UUID, str]:
    """Return running jobs whose worker is gone to their queue now (`lease_revoked`); id -> kind."""
    return _act("jobs_release", job_ids, reason, using)
