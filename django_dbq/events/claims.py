"""The worker's side of the ledger: claim, record outcomes, renew and expire leases.

Each function is one statement and one round trip; none holds a transaction
open across a task. `key` is the worker's secret: the
database accepts a worker's events only for jobs claimed with the same key
(new_worker_key() makes one).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

from django.db import DEFAULT_DB_ALIAS

from django_dbq import jsonutil
from django_dbq.clock import from_epoch
from django_dbq.events.append import Appended, encode_events, execute_secret
from django_dbq.retries import lost_worker_rules
from django_dbq.sqlfiles import bind, load_queries

# The columns jobs_claim returns, in order: Job's concrete fields (created,
# modified and lease_until as epoch seconds), then the state the job had before
# the claim (NEW or READY), which `released` restores, and the kind of the job's
# event before the claim (NULL for a new job).
CLAIM_FIELDS = (
    "id",
    "created",
    "modified",
    "name",
    "state",
    "next_task",
    "workspace",
    "queue_name",
    "priority",
    "run_after",
    "version",
    "claimed_by",
    "lease_until",
    "attempts",
    "cancel_requested",
)


def new_worker_key() -> str:
    """A fresh secret key for one worker (256 random bits, as hex)."""
    return secrets.token_hex(32)


def _execute(name: str, params: dict[str, Any], using: str) -> list[tuple[Any, ...]]:
    # Bound by the server: the key travels apart from the statement text, which
    # any session of the same role can read in pg_stat_activity.
    return execute_secret(
        *bind(load_queries("django_dbq.events", "claims.sql")[name], params), using
    )


def claim_jobs(
    queue_name: str,
    limit: int,
    worker: str,
    key: str,
    host: str,
    pid: int,
    lease_seconds: float,
    using: str = DEFAULT_DB_ALIAS,
    names: Sequence[str] | None = None,
) -> list[tuple[Any, ...]]:
    """Claim up to `limit` ready jobs of a queue in one statement; return rows of CLAIM_FIELDS + prior state + last kind.

    With `names`, only jobs of those names are claimed.
    """
    params = {
        "queue_name": queue_name,
        "limit": limit,
        "worker": worker,
        "key": key,
        "host": host,
        "pid": pid,
        "lease_seconds": lease_seconds,
        "names": None if names is None else list(names),
    }
    return _execute("jobs_claim", params, using)


def record_and_claim(
    worker: str,
    key: str,
    events: Sequence[tuple[uuid.UUID, str, str]],
    queue_name: str,
    limit: int,
    host: str,
    pid: int,
    lease_seconds: float,
    using: str = DEFAULT_DB_ALIAS,
    names: Sequence[str] | None = None,
) -> tuple[set[uuid.UUID], list[tuple[Any, ...]]]:
    """Record outcomes for held jobs, then claim the next batch: one statement, one commit.

    Returns the ids whose outcome was recorded and the claimed rows (as claim_jobs).
    """
    params = {
        "key": key,
        "events": encode_events(events),
        "queue_name": queue_name,
        "limit": limit,
        "worker": worker,
        "host": host,
        "pid": pid,
        "lease_seconds": lease_seconds,
        "names": None if names is None else list(names),
    }
    rows = _execute("jobs_record_and_claim", params, using)
    recorded = {row[1] for row in rows if row[0]}
    return recorded, [row[1:] for row in rows if not row[0]]


def append_held(
    key: str,
    events: Sequence[tuple[uuid.UUID, str, str]],
    using: str = DEFAULT_DB_ALIAS,
) -> set[uuid.UUID]:
    """Append (job_id, kind, payload JSON) events for jobs the worker holds; return the ids recorded."""
    if not events:
        return set()
    params = {"key": key, "events": encode_events(events)}
    return {row[0] for row in _execute("jobs_append_held", params, using)}


def save_held(
    key: str, events: Sequence[tuple[uuid.UUID, str, str]], using: str = DEFAULT_DB_ALIAS
) -> list[Appended]:
    """job.save() inside a task: append `updated` events for jobs the worker holds."""
    rows = _execute("jobs_save_held", {"key": key, "events": encode_events(events)}, using)
    return [Appended(job_id, version, from_epoch(at)) for job_id, version, at in rows]


def save_failed(
    key: str, events: Sequence[tuple[uuid.UUID, str, str]], using: str = DEFAULT_DB_ALIAS
) -> list[Appended]:
    """After a failure's hooks: `updated` events for jobs the worker has just failed."""
    rows = _execute("jobs_save_failed", {"key": key, "events": encode_events(events)}, using)
    return [Appended(job_id, version, from_epoch(at)) for job_id, version, at in rows]


def renew_leases(
    key: str, job_ids: Sequence[uuid.UUID], lease_seconds: float, using: str = DEFAULT_DB_ALIAS
) -> set[uuid.UUID]:
    """Extend the worker's lease on the given jobs; return the ids still held."""
    if not job_ids:
        return set()
    params = {"key": key, "job_ids": list(job_ids), "lease_seconds": lease_seconds}
    return {row[0] for row in _execute("jobs_renew_leases", params, using)}


class Expiry(NamedTuple):
    """A job whose lease ran out, and the event that returned it: lease_expired,
    or retried/failed when it counted an attempt of its lost worker."""

    job_id: uuid.UUID
    kind: str


def expire_leases(
    worker: str,
    limit: int = 500,
    using: str = DEFAULT_DB_ALIAS,
    rules: dict[str, dict[str, Any]] | None = None,
) -> list[Expiry]:
    """Put running jobs whose lease ran out back in their queue, those of up to `limit` lost workers.

    The job a lost worker was running counts an attempt under `rules` (by default
    lost_worker_rules(): each job's retries and backoff from settings.JOBS):
    `retried`, or `failed` once it has had them all, with a WorkerLost error.
    """
    params = {
        "worker": worker,
        "limit": limit,
        "rules": jsonutil.dumps(lost_worker_rules() if rules is None else rules),
    }
    return [Expiry(*row) for row in _execute("jobs_expire_leases", params, using)]


def seconds_until_due(queue_name: str, using: str = DEFAULT_DB_ALIAS) -> float | None:
    """Seconds until the next scheduled job of the queue is due, or None when none waits."""
    return _execute("jobs_seconds_until_due", {"queue_name": queue_name}, using)[0][0]
