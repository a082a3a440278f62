"""Replay: rebuild the projections from their ledgers, or check that a rebuild matches.

replay_events rebuilds the live tables, the Job projection from the job ledger
and the Queue projection from the queue ledger (the owner, under a SHARE lock
on both ledgers). verify_projection and projection_as_of are audit reads: they
rebuild into TEMP tables of the session and hold no lock beyond a SELECT's.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, router, transaction
from psycopg import sql as psycopg_sql

from django_dbq.exceptions import DbqError
from django_dbq.sqlfiles import bind, load_queries, schema_of

if TYPE_CHECKING:
    from django_dbq.projections.models import Job


@dataclass
class Drift:
    """One job whose live row differs from its replayed row."""

    job_id: uuid.UUID
    live: dict[str, Any] | None
    replayed: dict[str, Any] | None

    def describe(self) -> str:
        """One line per difference, readable by a person."""
        return _describe(f"job {self.job_id}", self.live, self.replayed)


@dataclass
class QueueDrift:
    """One queue whose live row (django_dbq_queue) differs from its replayed row."""

    name: str
    live: dict[str, Any] | None
    replayed: dict[str, Any] | None

    def describe(self) -> str:
        """One line per difference, readable by a person."""
        return _describe(f"queue {self.name}", self.live, self.replayed)


def _describe(what: str, live: dict[str, Any] | None, replayed: dict[str, Any] | None) -> str:
    if live is None:
        return f"{what}: missing from the live projection, present after replay"
    if replayed is None:
        return f"{what}: in the live projection, absent after replay"
    columns = sorted(k for k in live if live[k] != replayed.get(k))
    changes = "; ".join(
        f"{c}: live={_show(live[c])} replayed={_show(replayed.get(c))}" for c in columns
    )
    return f"{what}: {changes}"


@dataclass
class Verification:
    """The outcome of replay --verify."""

    events: int
    jobs: int
    drift_count: int
    drift: list[Drift] = field(default_factory=list)
    # The queue ledger and its projection, compared likewise.
    queue_events: int = 0
    queues: int = 0
    queue_drift: list[QueueDrift] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.drift_count == 0 and not self.queue_drift


def _show(value: Any) -> str:
    return orjson.dumps(value).decode() if not isinstance(value, str) else value


def _query(name: str) -> str:
    return load_queries("django_dbq.projections")[name]


def _run(cursor: Any, name: str, params: dict[str, Any] | None = None) -> Any:
    cursor.execute(*bind(_query(name), params))
    return cursor


# A ledger larger than this (on disk) is replayed in slices of jobs, each slice
# round by round, so that the server holds a few times this much at once (about
# 4x with small payloads, 8x measured with 2 KB workspaces), not the whole ledger.
REPLAY_SLICE_BYTES = 128 * 1024 * 1024


def replay_events(using: str = DEFAULT_DB_ALIAS, slice_bytes: int = REPLAY_SLICE_BYTES) -> int:
    """Rebuild the Job and Queue projections from their ledgers; return the number of events applied."""
    with transaction.atomic(using), connections[using].cursor() as cursor:
        _run(cursor, "ledger_lock")
        events = _run(cursor, "projection_replay", {"slice_bytes": slice_bytes}).fetchone()[0]
        return events + _run(cursor, "queues_replay").fetchone()[0]


def verify_projection(
    using: str = DEFAULT_DB_ALIAS, show: int = 20, slice_bytes: int = REPLAY_SLICE_BYTES
) -> Verification:
    """Rebuild the projection into a scratch table and diff it with the live one.

    An audit read (see _audit_read): the ledger and the live rows are read in one
    snapshot, nothing waits for it and it writes nothing live.
    """
    with _audit_read(using) as (cursor, one_snapshot):
        events = _rebuild(cursor, one_snapshot, slice_bytes=slice_bytes, live=True)
        jobs = _run(cursor, "scratch_count").fetchone()[0]
        drift_count = _run(cursor, "scratch_count_drift").fetchone()[0]
        rows = _run(cursor, "scratch_list_drift", {"limit": show}).fetchall() if drift_count else []
        queue_events = _rebuild_queues(cursor, one_snapshot)
        queues = _run(cursor, "scratch_queue_count").fetchone()[0]
        queue_rows = _run(cursor, "scratch_queue_list_drift").fetchall()
    return Verification(
        events=events,
        jobs=jobs,
        drift_count=drift_count,
        drift=[Drift(row[0], _load(row[1]), _load(row[2])) for row in rows],
        queue_events=queue_events,
        queues=queues,
        queue_drift=[QueueDrift(row[0], _load(row[1]), _load(row[2])) for row in queue_rows],
    )


def _load(value: Any) -> dict[str, Any] | None:
    if value is None or isinstance(value, dict):
        return value
    return orjson.loads(value)


def projection_as_of(
    when: datetime, job_ids: Sequence[uuid.UUID] | None = None, using: str | None = None
) -> list[Job]:
    """The Job rows as they were at `when`, rebuilt from the ledger; the live table is untouched.

    With job_ids only those jobs are rebuilt (cheap); without, the whole
    projection is. An audit read (see _audit_read): nothing waits for it. On the
    database Django's routers read the ledger from (db_for_read), unless `using`.
    """
    from django_dbq.events.models import JobEvent
    from django_dbq.projections.models import Job

    using = using or router.db_for_read(JobEvent)
    ids = None if job_ids is None else list(job_ids)
    with _audit_read(using) as (cursor, one_snapshot):
        _rebuild(cursor, one_snapshot, until=when, job_ids=ids)
        return list(Job.objects.db_manager(using).raw(_query("scratch_jobs")))


@contextmanager
def _audit_read(using: str) -> Iterator[tuple[Any, bool]]:
    """A read of the past that takes no lock beyond a SELECT's and leaves nothing behind.

    It rebuilds into pg_temp.dbq_scratch_job, through functions that run with the
    caller's rights, in a transaction of its own (REPEATABLE READ: one snapshot
    for all its statements) or in a savepoint of the caller's, and rolls back.
    Yields a cursor and whether the read's statements share one snapshot: inside
    a caller's READ COMMITTED transaction they do not, and _rebuild copies what
    it reads in one statement instead.
    """
    connection = connections[using]
    outermost = connection.get_autocommit() and not connection.in_atomic_block
    with (
        _repeatable_read(connection) if outermost else nullcontext(),
        transaction.atomic(using),
        connection.cursor() as cursor,
    ):
        _pin_search_path(cursor)
        one_snapshot = outermost or _run(cursor, "audit_isolation").fetchone()[0]
        try:
            _run(cursor, "scratch_projection")
        except DatabaseError as exc:
            if not isinstance(exc.__cause__, psycopg.errors.ReadOnlySqlTransaction):
                raise
            raise DbqError(
                f"Database {using!r} is read-only (a hot standby, or default_transaction_read_only): "
                "as_of and verify rebuild the jobs into TEMP tables, which it cannot create. "
                "Read them from the primary or a logical replica (using=..., or your router's "
                "db_for_read); job history, stats and counts read from a hot standby."
            ) from None
        yield cursor, one_snapshot
        transaction.set_rollback(True, using)


def _pin_search_path(cursor: Any) -> None:
    """For the read's transaction (or savepoint): pg_catalog, the app's schema, pg_temp last.

    So that what the read names resolves as the replay functions' own names do:
    no TEMP table of the session stands in for a table of the app's schema, and
    no operator planted in that schema for the types of pg_catalog's is used (the
    queries name pg_catalog's functions whose arguments such a plant could match
    more closely).
    """
    schema = schema_of(cursor)
    if schema.startswith("pg_temp"):
        raise DbqError(
            f"The connection's current schema is {schema}, a temporary one; set its "
            "search_path to the schema that holds the django_dbq tables."
        )
    path = psycopg_sql.SQL("pg_catalog, {}, pg_temp").format(psycopg_sql.Identifier(schema))
    cursor.execute(
        "SELECT pg_catalog.set_config('search_path', %s, true)",
        [path.as_string(cursor.connection)],
    )


@contextmanager
def _repeatable_read(connection: Any) -> Iterator[None]:
    """The next transaction of an idle connection begins REPEATABLE READ.

    Set on the driver's connection, so that psycopg's own BEGIN says so: a SET
    TRANSACTION statement would have to come first, and execute wrappers
    (pgtrigger.ignore()) put a statement of theirs before every one.
    """
    raw = connection.connection
    previous = raw.isolation_level
    raw.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    try:
        yield
    finally:
        if not raw.closed:
            raw.isolation_level = previous


def _rebuild(
    cursor: Any,
    one_snapshot: bool,
    until: datetime | None = None,
    job_ids: list[uuid.UUID] | None = None,
    slice_bytes: int = REPLAY_SLICE_BYTES,
    live: bool = False,
) -> int:
    """Rebuild the projection (at `until`, of `job_ids`) into the scratch table.

    With `live`, pg_temp.dbq_scratch_live holds the live rows of the same
    snapshot. Returns the number of events applied.
    """
    params = {"until": until, "job_ids": job_ids, "slice_bytes": slice_bytes}
    if one_snapshot:
        if live:
            _run(cursor, "scratch_live_view")
        return _run(cursor, "scratch_replay", params).fetchone()[0]
    _run(cursor, "scratch_live_table")
    _run(cursor, "scratch_events_table")
    _run(cursor, "scratch_copy", {**params, "live": live})
    return _run(cursor, "scratch_replay_copy", params).fetchone()[0]


def _rebuild_queues(cursor: Any, one_snapshot: bool) -> int:
    """Rebuild the queue projection into pg_temp.dbq_scratch_queue, beside its live rows.

    Outside one snapshot, the queue ledger and the live queue rows are copied in
    one statement first (the two projections are independent, so each is
    compared within a snapshot of its own). Returns the number of events applied.
    """
    _run(cursor, "scratch_queue_projection")
    if one_snapshot:
        _run(cursor, "scratch_queue_live_view")
        return _run(cursor, "scratch_queue_replay").fetchone()[0]
    _run(cursor, "scratch_queue_live_table")
    _run(cursor, "scratch_queue_events_table")
    _run(cursor, "scratch_queue_copy")
    return _run(cursor, "scratch_queue_replay_copy").fetchone()[0]
