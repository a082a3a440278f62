"""The append API: the only code that inserts JobEvent rows."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, transaction
from django.db.backends.postgresql.base import ServerBindingCursor
from django.db.backends.utils import CursorWrapper

from django_dbq.clock import from_epoch, from_epochs
from django_dbq.exceptions import DuplicateJobError, JobGoneError
from django_dbq.seals import sign_retired
from django_dbq.sqlfiles import bind, load_queries, positional_sql, schema_of, with_schema


class Appended(NamedTuple):
    """What the ledger recorded for one appended event."""

    job_id: uuid.UUID
    version: int
    at: datetime


def _queries() -> dict[str, str]:
    return load_queries("django_dbq.events")


def encode_events(events: Sequence[tuple[uuid.UUID, str, str]]) -> str:
    """One JSON array of {job_id, kind, payload} for a batch of events.

    Payloads arrive encoded already; one document per batch lets the server parse
    it in one go, where an array parameter would be escaped element by element.
    """
    return orjson.dumps(
        [
            {"job_id": job_id, "kind": kind, "payload": orjson.Fragment(payload)}
            for job_id, kind, payload in events
        ]
    ).decode()


@contextmanager
def bound_cursor(using: str = DEFAULT_DB_ALIAS, keep: bool = True) -> Iterator[CursorWrapper]:
    """A Django cursor that sends parameters apart from the statement (server-side binding).

    Django's default cursor inlines the parameters, so no statement can be
    prepared. This one lets psycopg prepare a statement it runs often when the
    database's OPTIONS allow it ("prepare_threshold"; Django turns preparing off
    by default for the sake of connection poolers). Errors and query logging are
    Django's, as with connection.cursor(); while the connection has execute
    wrappers, it is connection.cursor(). With `keep`, the connection's kept
    cursor serves the statement and stays open for the next; without (calls whose
    results are large), a cursor of its own is closed after use.
    """
    connection = connections[using]
    # An execute wrapper may rewrite the statement into several (pgtrigger.ignore()
    # prepends one), which only a client-side bound query may hold.
    if (
        connection.settings_dict["OPTIONS"].get("server_side_binding") is True
        or connection.execute_wrappers
    ):
        with connection.cursor() as cursor:
            yield cursor
        return
    if connection.allow_thread_sharing or not keep:
        # Shared between threads (inc_thread_sharing(), as Django's live server
        # does): a cursor's results are those of whoever executed on it last, so
        # each statement has a cursor of its own, closed after use.
        raw = _server_binding_cursor(connection)
        with _wrapped(connection, raw) as cursor:
            yield cursor
        return
    raw = _kept_cursor(connection)
    # Not closed after use: the next statement of this connection reuses it.
    yield _wrapped(connection, raw)


def _wrapped(connection: Any, raw: ServerBindingCursor) -> CursorWrapper:
    return (
        connection.make_debug_cursor(raw)
        if connection.queries_logged
        else connection.make_cursor(raw)
    )


def _kept_cursor(connection: Any) -> ServerBindingCursor:
    """The connection's server-binding cursor for the ledger's statements, made once per connection."""
    kept = connection.__dict__.get("_dbq_cursor")
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_thread_sharing()
    if kept is None or kept.closed or kept.connection is not connection.connection:
        with connection.wrap_database_errors:
            kept = connection.__dict__["_dbq_cursor"] = ServerBindingCursor(connection.connection)
    return kept


def execute_secret(
    sql: str, params: Sequence[Any], using: str = DEFAULT_DB_ALIAS
) -> list[tuple[Any, ...]]:
    """Run a statement that carries a secret (the worker's key); return its rows.

    Bound by the server on a cursor of psycopg's own: a client-side bound
    statement would show its parameters to every session of the same role in
    pg_stat_activity, and Django's execute wrappers and query log would see them.
    Errors are Django's, as with connection.cursor().
    """
    connection = connections[using]
    with _server_binding_cursor(connection) as cursor, connection.wrap_database_errors:
        connection.validate_no_broken_transaction()
        cursor.execute(sql, params)
        return cursor.fetchall()


def _server_binding_cursor(connection: Any) -> ServerBindingCursor:
    """A psycopg cursor that binds on the server, on the connection as Django keeps it."""
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_thread_sharing()
    with connection.wrap_database_errors:
        return ServerBindingCursor(connection.connection)


def append_created(
    events: Sequence[dict[str, Any]], using: str = DEFAULT_DB_ALIAS
) -> list[datetime]:
    """Append `created` events ({job_id, payload} dicts) in one statement; return their times, in order."""
    if len(events) == 1:
        (event,) = events
        query = bind(
            _queries()["events_insert_created_one"],
            {"job_id": event["job_id"], "payload": orjson.dumps(event["payload"]).decode()},
        )
    else:
        job_ids, payloads, which = shared_payloads(events)
        query = bind(
            _queries()["events_insert_created"],
            {"job_ids": job_ids, "payloads": payloads, "which": which},
        )
    with bound_cursor(using) as cursor:
        cursor.execute(*query)
        return _times(cursor.fetchall(), len(events))


def shared_payloads(events: Sequence[dict[str, Any]]) -> list[Any]:
    """The job ids, their payloads as one JSON array, and each job's payload's position.

    A payload object that several events hold (enqueue_jobs gives jobs alike one)
    is encoded and sent once, and the server parses and checks it once
    (dbq_create_jobs_v3). The events hold their payloads meanwhile, so no two
    of them share an id() unless they are one object.
    """
    positions: dict[int, int] = {}
    encoded: list[bytes] = []
    which = []
    for event in events:
        payload = event["payload"]
        position = positions.get(id(payload))
        if position is None:
            position = positions[id(payload)] = len(encoded)
            encoded.append(orjson.dumps(payload))
        which.append(position)
    payloads = b"[" + b",".join(encoded) + b"]"
    job_ids = [event["job_id"] for event in events]
    if not all(type(job_id) is uuid.UUID for job_id in job_ids):
        # Job(id="...") with text: psycopg dumps no list of mixed types, and
        # dbq_create_jobs_v2 took any text PostgreSQL reads as a uuid.
        job_ids = [None if job_id is None else str(job_id) for job_id in job_ids]
    return [job_ids, payloads.decode(), which]


class UniqueCreated(NamedTuple):
    """What the ledger made of one job with a unique key: created at `at`, or a duplicate."""

    job_id: uuid.UUID
    at: datetime | None
    # The job that holds the key (None when it finished meanwhile: the key is free).
    duplicate_of: uuid.UUID | None
    replaced: bool


def append_unique_created(
    events: Sequence[dict[str, Any]], replace: bool, using: str = DEFAULT_DB_ALIAS
) -> list[UniqueCreated]:
    """Append `created` events, some with a unique key, in one statement; report each, in order."""
    name = "events_insert_unique_replacing" if replace else "events_insert_unique_created"
    query = bind(_queries()[name], {"events": orjson.dumps(events).decode()})
    with bound_cursor(using) as cursor:
        cursor.execute(*query)
        return _reported(cursor.fetchall(), len(events))


def _reported(rows: list[tuple[Any, ...]], expected: int) -> list[UniqueCreated]:
    if len(rows) != expected:
        raise RuntimeError(f"django_dbq: {expected} created events sent, {len(rows)} reported")
    return [UniqueCreated(i, from_epoch(at), held, replaced) for i, at, held, replaced in rows]


def _times(rows: list[tuple[float]], expected: int) -> list[datetime]:
    if len(rows) != expected:  # an INSERT inserts all its rows or raises
        raise RuntimeError(f"django_dbq: {expected} created events sent, {len(rows)} recorded")
    return from_epochs(rows)


class _Batches:
    """Batches of events, encoded one at a time as the pipeline asks for them."""

    def __init__(
        self,
        batches: Iterable[Sequence[dict[str, Any]]],
        count: int,
        encode: Callable[[Sequence[dict[str, Any]]], list[Any]],
    ) -> None:
        self._batches = batches
        self._count = count
        self._encode = encode
        self.sizes: list[int] = []

    def __len__(self) -> int:  # for Django's query log ("... times")
        return self._count

    def __iter__(self) -> Iterator[list[Any]]:
        for events in self._batches:
            self.sizes.append(len(events))
            yield self._encode(events)


def _as_json_array(events: Sequence[dict[str, Any]]) -> list[Any]:
    return [orjson.dumps(events).decode()]


def append_created_batches(
    batches: Iterable[Sequence[dict[str, Any]]], count: int, using: str = DEFAULT_DB_ALIAS
) -> list[datetime]:
    """Append `created` events batch by batch, one statement each, in one pipeline.

    The statements go out as the batches are produced (psycopg's executemany
    pipelines them), so the server inserts one batch while the caller prepares
    the next. Returns the events' times in the order given. Call it inside a
    transaction: an error in a later batch must undo the earlier ones. Where the
    connection has execute wrappers (such as the one pgtrigger.ignore()
    installs), each batch goes through them as a statement of its own instead,
    unpipelined.
    """
    connection = connections[using]
    times: list[datetime] = []
    if connection.execute_wrappers:
        for events in batches:
            times.extend(append_created(events, using=using))
        return times
    for size, rows in _pipelined("events_insert_created", batches, count, using, shared_payloads):
        times.extend(_times(rows, size))
    return times


def append_unique_created_batches(
    batches: Iterable[Sequence[dict[str, Any]]],
    count: int,
    replace: bool,
    using: str = DEFAULT_DB_ALIAS,
) -> list[UniqueCreated]:
    """append_unique_created batch by batch, in one pipeline (as append_created_batches)."""
    connection = connections[using]
    reported: list[UniqueCreated] = []
    if connection.execute_wrappers:
        for events in batches:
            reported.extend(append_unique_created(events, replace, using=using))
        return reported
    name = "events_insert_unique_replacing" if replace else "events_insert_unique_created"
    for size, rows in _pipelined(name, batches, count, using, _as_json_array):
        reported.extend(_reported(rows, size))
    return reported


def _pipelined(
    name: str,
    batches: Iterable[Sequence[dict[str, Any]]],
    count: int,
    using: str,
    encode: Callable[[Sequence[dict[str, Any]]], list[Any]],
) -> Iterator[tuple[int, list[tuple[Any, ...]]]]:
    """Run the named query once per batch of events, pipelined; yield each batch's size and rows.

    `encode` turns a batch into the query's parameters, in their order.
    """
    connection = connections[using]
    sql = positional_sql(_queries()[name])
    params = _Batches(batches, count, encode)
    # A cursor of its own: a long call's rows are not kept past it.
    with bound_cursor(using, keep=False) as cursor:
        raw = cursor.cursor
        logged = (
            cursor.debug_sql(sql, params, many=True) if connection.queries_logged else nullcontext()
        )
        with logged, connection.wrap_database_errors:
            connection.validate_no_broken_transaction()
            raw.executemany(sql, params, returning=True)
            for size in params.sizes:
                yield size, raw.fetchall()
                raw.nextset()


def append_updates(
    events: Sequence[tuple[uuid.UUID, str, str]], using: str = DEFAULT_DB_ALIAS
) -> list[Appended]:
    """Append job.save()'s (job_id, "updated", payload JSON) events, one per job, in one statement.

    Goes through the ledger's function for saves, which any role granted it
    (app, worker) may call.
    """
    return _append("events_update", events, using)


def append_events(
    events: Sequence[tuple[uuid.UUID, str, str]], using: str = DEFAULT_DB_ALIAS
) -> list[Appended]:
    """Append (job_id, kind, payload JSON) events of any kind, at most one per job, in one statement.

    A plain INSERT into the ledger, which only the tables' owner may make (for
    tests, imports and repairs); the trigger still checks every transition.
    """
    return _append("events_append", events, using)


# The projection's index of the keys that waiting and running jobs hold.
UNIQUE_KEY_INDEX = "django_dbq_job_unique_key"


@contextmanager
def refusing_held_keys(action: str) -> Iterator[None]:
    """Turn the unique-key index's refusal of a transition into a DuplicateJobError that says why."""
    try:
        yield
    except IntegrityError as error:
        diag = getattr(error.__cause__, "diag", None)
        if getattr(diag, "constraint_name", None) != UNIQUE_KEY_INDEX:
            raise
        raise DuplicateJobError(
            f"{action} would make a second job with the same unique_key wait or run "
            f"({diag.message_detail}); wait until the job that holds the key finishes, "
            "or cancel it first. Nothing was changed."
        ) from error


def _append(query: str, events: Sequence[tuple[uuid.UUID, str, str]], using: str) -> list[Appended]:
    # Atomic: when one job is missing, the events of the others are not kept either.
    with (
        refusing_held_keys("This save"),
        transaction.atomic(using),
        connections[using].cursor() as cursor,
    ):
        cursor.execute(*bind(_queries()[query], {"events": encode_events(events)}))
        appended = [
            Appended(job_id, version, from_epoch(at)) for job_id, version, at in cursor.fetchall()
        ]
        if len(appended) != len(events):
            missing = {job_id for job_id, _, _ in events} - {row.job_id for row in appended}
            raise JobGoneError(
                f"No job with id {', '.join(map(str, sorted(missing)))} in the projection; "
                "it was never created or has been removed by delete_old_jobs."
            )
    return appended


def delete_old_jobs(
    created_before: datetime,
    using: str = DEFAULT_DB_ALIAS,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Remove the whole histories of COMPLETE, FAILED and CANCELLED jobs created before a time.

    In batches of `batch_size` jobs (settings.DBQ_RETENTION_BATCH, 5,000) in id
    order, each in a transaction of its own when called outside one, so no batch
    holds its locks for long and a run over millions of jobs lets the queue go
    on; inside the caller's transaction, all of them in it. The run ends at the
    greatest job id it started with: jobs enqueued meanwhile do not keep it going
    (with time-ordered ids they come after it). The sealed events
    among them leave retirement records, signed here with settings.DBQ_LEDGER_KEY
    in the batch's transaction, so the seals still verify. `progress` is called
    after each batch with the jobs removed so far and the batches done.
    """
    batch_size = retention_batch() if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size is {batch_size!r}; retention takes at least 1 job per batch.")
    outermost = not connections[using].in_atomic_block
    deleted, batches, after = 0, 0, None
    with connections[using].cursor() as cursor:
        query = _queries()["events_last_job_id"]
        cursor.execute(with_schema(query, schema_of(cursor), cursor.connection))
        last = cursor.fetchone()
    while True:
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            if outermost:
                # The database runs retention in READ COMMITTED only.
                cursor.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            params = {"created_before": created_before, "after_id": after, "max_jobs": batch_size}
            cursor.execute(*bind(_queries()["events_delete_old_jobs"], params))
            went, after = cursor.fetchone()
            sign_retired(cursor)
        deleted, batches = deleted + went, batches + 1
        if progress is not None:
            progress(deleted, batches)
        if after is None or last is None or after >= last[0]:
            return deleted


def retention_batch() -> int:
    """Jobs per retention batch (settings.DBQ_RETENTION_BATCH, default 5,000)."""
    from django.conf import settings

    return int(getattr(settings, "DBQ_RETENTION_BATCH", DEFAULT_RETENTION_BATCH))


DEFAULT_RETENTION_BATCH = 5_000
