"""Translating the ORM writes users already make into ledger events.

``Job.objects.create()``, ``bulk_create()`` and ``job.save()`` land here: the new or
changed values are checked in Python first, so bad input gets an error that names
the fix and nothing is written; the database checks the same rules again.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import orjson
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from django_dbq import jsonutil, tasks
from django_dbq.events.append import (
    UniqueCreated,
    append_created,
    append_created_batches,
    append_unique_created,
    append_unique_created_batches,
    append_updates,
)
from django_dbq.exceptions import (
    DbqError,
    DuplicateJobError,
    InvalidJobError,
    JobConfigError,
    JobGoneError,
)
from django_dbq.projections.models import QUEUE_NAME_LENGTH, UNIQUE_KEY_LENGTH

if TYPE_CHECKING:
    from django_dbq.projections.models import Job

logger = logging.getLogger(__name__)

# The fields save() records when they change (`created`: when the job was
# enqueued, which django-db-queue's users set to age a job).
TRACKED_FIELDS = (
    "name",
    "state",
    "next_task",
    "workspace",
    "queue_name",
    "priority",
    "run_after",
    "created",
)
# Tracked fields whose values are strings, numbers, times or None.
_PLAIN_FIELDS = tuple(field for field in TRACKED_FIELDS if field not in ("state", "workspace"))
# The states in which a worker holds a job; only the worker's events move a job among them.
WORKER_STATES = ("PROCESSING", "STOPPING")
# django-db-queue's six states. A job created PROCESSING or STOPPING is held by
# no worker: lease expiry gives it back to its queue.
CREATE_STATES = ("NEW", "READY", *WORKER_STATES, "FAILED", "COMPLETE")
# The states no worker holds, among which save() may move a job (as the state machine does).
SAVE_STATES = ("NEW", "READY", "FAILED", "COMPLETE", "CANCELLED")
SMALLINT_RANGE = (-32768, 32767)


# bulk_create sends its jobs in statements of this many, pipelined: the server
# inserts one batch while the next is encoded.
PIPELINE_BATCH = 500


# What create() and bulk_create() do with a job whose unique key a waiting or
# running job holds: raise DuplicateJobError (create's default), leave it out
# (bulk_create's default), or update the waiting job with its workspace,
# run_after and priority.
ON_DUPLICATE = ("raise", "skip", "replace")


def enqueue_jobs(
    jobs: Sequence[Job], using: str, batch_size: int | None = None, on_duplicate: str = "raise"
) -> list[Job]:
    """Create jobs: one `created` event each, one INSERT per batch; return the jobs created.

    One bad job leaves the whole call without effect. Every job's fields are
    checked and its creation hook run before anything is sent (as in
    django-db-queue, a job whose hook raises is logged and not created; hooks may
    query the database, which the connection cannot serve while batches stream).
    A call of one batch encodes every workspace before its INSERT. A longer call
    runs in a transaction and encodes each batch while the server inserts the one
    before, so that the server and Python work at the same time; a workspace that
    cannot be stored rolls the transaction back.
    """
    plans: dict[str, tuple[str, str | None]] = {}
    ready = [job for job in jobs if _prepare_new(job, plans)]
    size = batch_size or PIPELINE_BATCH
    loaded: list[dict[str, Any]] = []

    # Jobs alike share one payload object, which append_created then encodes once.
    shared: dict[tuple[Any, ...], dict[str, Any]] = {}

    def batches() -> Iterator[list[dict[str, Any]]]:
        for start in range(0, len(ready), size):
            batch = ready[start : start + size]
            events = []
            for job in batch:
                workspace = jsonutil.encode_workspace(job.workspace)
                loaded.append(_snapshot(job, workspace))
                if job.run_after is None:
                    key = (
                        job.name,
                        job.state,
                        job.next_task,
                        workspace,
                        job.queue_name,
                        job.priority,
                    )
                    payload = shared.get(key)
                    if payload is None:
                        payload = shared[key] = _created_payload(job, workspace)
                else:
                    payload = _created_payload(job, workspace)
                events.append({"job_id": job.pk, "payload": payload})
            yield events

    if not ready:
        return ready
    if any(job.__dict__.get("unique_key") is not None for job in ready):
        return _enqueue_unique(ready, using, size, on_duplicate)
    if len(ready) <= size:
        times = append_created(next(batches()), using=using)
    else:
        with transaction.atomic(using):
            times = append_created_batches(batches(), -(-len(ready) // size), using=using)
    for job, snapshot, at in zip(ready, loaded, times, strict=True):
        snapshot["created"] = at
        _mark_saved(job, using, version=1, at=at, snapshot=snapshot)
        job.__dict__["created"] = at
    return ready


def _enqueue_unique(ready: list[Job], using: str, size: int, on_duplicate: str) -> list[Job]:
    """enqueue_jobs for jobs among which some have a unique key: a statement per batch.

    A duplicate is left out of what comes back; its instance stays unsaved and
    knows the job that holds its key. A duplicate whose holder finished before
    the statement could name it is sent again: its key is free. Several batches
    are pipelined, as enqueue_jobs pipelines those of jobs without keys.
    """
    if on_duplicate not in ON_DUPLICATE:
        raise InvalidJobError(
            f"on_duplicate={on_duplicate!r} is not one of {', '.join(map(repr, ON_DUPLICATE))}."
        )
    for job in ready:
        _check_field("unique_key", job.__dict__.get("unique_key"))
    replace = on_duplicate == "replace"
    created: list[Job] = []
    snapshots: list[dict[str, Any]] = []

    def batches(jobs: list[Job]) -> Iterator[list[dict[str, Any]]]:
        for start in range(0, len(jobs), size):
            events = []
            for job in jobs[start : start + size]:
                job.__dict__.pop("_dbq_duplicate", None)
                workspace = jsonutil.encode_workspace(job.workspace)
                snapshots.append(_snapshot(job, workspace))
                payload = _created_payload(job, workspace)
                if job.unique_key is not None:
                    payload["unique_key"] = job.unique_key
                events.append({"job_id": job.pk, "payload": payload})
            yield events

    pending = ready
    # Several batches: all or none. One: its statement is atomic on its own.
    with transaction.atomic(using) if len(ready) > size else nullcontext():
        for _ in range(3):
            snapshots.clear()
            if len(pending) <= size:
                rows = append_unique_created(next(batches(pending)), replace, using=using)
            else:
                count = -(-len(pending) // size)
                rows = append_unique_created_batches(batches(pending), count, replace, using)
            pending = _note_created(pending, snapshots, rows, using, created)
            if not pending:
                break
    for job in pending:
        job.__dict__["_dbq_duplicate"] = (None, False)
    if on_duplicate == "raise":
        for job in ready:
            if "_dbq_duplicate" in job.__dict__:
                raise duplicate_error(job, using)
    return created


def _note_created(
    jobs: list[Job],
    snapshots: list[dict[str, Any]],
    rows: list[UniqueCreated],
    using: str,
    created: list[Job],
) -> list[Job]:
    """Mark the jobs the database created, and the duplicates; return those to send again."""
    again = []
    for job, snapshot, row in zip(jobs, snapshots, rows, strict=True):
        if row.at is not None:
            snapshot["created"] = row.at
            _mark_saved(job, using, version=1, at=row.at, snapshot=snapshot)
            job.__dict__["created"] = row.at
            created.append(job)
        elif row.duplicate_of is None:
            again.append(job)
        else:
            job.__dict__["_dbq_duplicate"] = (row.duplicate_of, row.replaced)
    return again


def duplicate_of(job: Job) -> tuple[Any, bool] | None:
    """For a job left out as a duplicate: (the id of the job holding its key, whether it was replaced)."""
    return job.__dict__.get("_dbq_duplicate")


def duplicate_error(job: Job, using: str) -> DuplicateJobError:
    """The DuplicateJobError for a job left out as a duplicate, with the job that holds its key."""
    from django_dbq.projections.models import Job as JobModel

    holder_id, _ = job.__dict__["_dbq_duplicate"]
    holder = JobModel.objects.using(using).filter(pk=holder_id).first() if holder_id else None
    key = job.unique_key
    if holder is None:
        message = (
            f"A job with unique_key {key!r} was waiting or running and finished while this "
            "one was created; none was made. Create it again."
        )
    elif holder.state in ("NEW", "READY"):
        message = (
            f"Job {holder.pk} with unique_key {key!r} is waiting ({holder.state}), so no "
            "second one was made. Pass on_duplicate='replace' to update the waiting job "
            "instead, or use another key."
        )
    else:
        message = (
            f"Job {holder.pk} with unique_key {key!r} is running ({holder.state}), so no "
            "second one was made (a running job cannot be replaced). Create it again "
            "once that job has finished, or use another key."
        )
    return DuplicateJobError(message, job=holder, unique_key=key)


def enqueue_ticks(
    schedule: str, ticks: Sequence[tuple[datetime.datetime, Job]], using: str
) -> list[Job]:
    """Enqueue a schedule's due ticks, one job each, unless another worker did; return the jobs created.

    Each job is checked and its creation hook run as by create(); a tick whose
    hook raises is logged and passes without a job. The database enqueues only
    the ticks after the schedule's last one (events/ticks.py), so a call that
    comes second enqueues nothing, and the jobs built for it are dropped.
    """
    from django_dbq.events.ticks import append_ticks

    plans: dict[str, tuple[str, str | None]] = {}
    events, jobs = [], {}
    for tick, job in ticks:
        event: dict[str, Any] = {"tick": tick.isoformat(), "job_id": None, "payload": None}
        if _prepare_new(job, plans):
            workspace = jsonutil.encode_workspace(job.workspace)
            event.update(job_id=job.pk, payload=_created_payload(job, workspace))
            jobs[job.pk] = job
        events.append(event)
    created = append_ticks(schedule, events, using=using)
    return [jobs[job_id] for job_id, _ in created]


def record_changes(job: Job, update_fields: Iterable[str] | None, using: str) -> None:
    """Append one `updated` event holding the fields of job that changed since it was loaded."""
    changes = _changed_fields(job, update_fields)
    if changes.get("state") in WORKER_STATES and _loaded_state(job) in WORKER_STATES:
        # A running task saving its job: the worker marks the instance STOPPING
        # when it records `stopping`, and the save must not try to set it.
        del changes["state"]
    if not changes:
        return
    for field, value in changes.items():
        _check_field(field, value)
    if "state" in changes and changes["state"] not in SAVE_STATES:
        raise InvalidJobError(
            f"job.save() cannot set state {_shown(changes['state'])!r}: only a worker moves a job to "
            "PROCESSING or STOPPING. Save it as NEW or READY and let a worker claim it."
        )
    payload = jsonutil.dumps({f: _to_json(f, v) for f, v in changes.items()}, "workspace")
    key = job.__dict__.get("_dbq_key")
    if key is not None and _loaded_state(job) in WORKER_STATES:
        # A task saving the job its worker holds: proved by the worker's key,
        # which lets the worker role save this job and no other.
        from django_dbq.events.claims import save_held

        saved = save_held(key, [(job.pk, "updated", payload)], using=using)
        if not saved:
            raise JobGoneError(
                f"Job {job.pk} is no longer held by this worker (its lease ran out or it "
                "was released); the save is not recorded."
            )
        (appended,) = saved
    else:
        (appended,) = append_updates([(job.pk, "updated", payload)], using=using)
    # With update_fields, the fields left out stay unsaved: the next save sends them.
    snapshot = _snapshot(job)
    if update_fields is not None:
        before = job.__dict__.get("_dbq_loaded", {})
        snapshot = {**before, **{f: snapshot[f] for f in changes if f in snapshot}}
    _mark_saved(job, using, version=appended.version, at=appended.at, snapshot=snapshot)


def start_tracking(job: Job) -> None:
    """From now on, changes_since_tracking(job) says what changed in job."""
    job.__dict__["_dbq_loaded"] = _snapshot(job)


def changes_since_tracking(job: Job) -> str | None:
    """The `updated` payload of what changed in job since start_tracking (or its last save), but its state.

    None when nothing did. A field whose change cannot be stored is logged and left out.
    """
    changes = _changed_fields(job, None)
    if changes.pop("state", None) is not None:
        logger.warning(
            "A hook set job id=%s to state %s; the state of a failed job stays FAILED "
            "(requeue it with job.requeue())",
            job.pk,
            _shown(job.state),
        )
    fields = {}
    for field, value in changes.items():
        try:
            _check_field(field, value)
            fields[field] = _to_json(field, value)
            jsonutil.dumps(fields[field], field)
        except DbqError as error:
            fields.pop(field, None)
            logger.error("The hooks' change of job id=%s is not recorded: %s", job.pk, error)
    return jsonutil.dumps(fields, "workspace") if fields else None


def mark_recorded(job: Job, using: str, version: int, at: datetime.datetime) -> None:
    """The job as an `updated` event at `version` left it."""
    _mark_saved(job, using, version=version, at=at, snapshot=_snapshot(job))


def _loaded_state(job: Job) -> Any:
    return job.__dict__.get("_dbq_loaded", {}).get("state")


class _WorkspaceText(str):
    """The workspace as read from the database, encoded for comparison only when needed."""


def remember_loaded(
    job: Job, field_names: Iterable[str] | None, workspace_text: str | None = None
) -> None:
    """Keep what was read from the database, so save() can tell what changed."""
    loaded = job.__dict__.setdefault("_dbq_loaded", {})
    names = TRACKED_FIELDS if field_names is None else field_names
    for field in names:
        if field in TRACKED_FIELDS and field in job.__dict__:
            loaded[field] = _fingerprint(field, job.__dict__[field])
    if workspace_text is not None:
        loaded["workspace"] = _WorkspaceText(workspace_text)


def _prepare_new(job: Job, plans: dict[str, tuple[str, str | None]]) -> bool:
    plan = plans.get(job.name) if isinstance(job.name, str) else None
    if plan is None:
        plan = plans[job.name] = _creation_plan(job.name)
    job.next_task, creation_hook = plan
    values = job.__dict__
    if values["workspace"] is None:
        values["workspace"] = {}
    state = values["state"]
    if not isinstance(state, str) or state not in CREATE_STATES:
        _check_field("state", state)
        raise InvalidJobError(
            f"A job cannot be created in state {_shown(state)!r}; use one of {', '.join(CREATE_STATES)} "
            "(cancel a job with job.cancel())."
        )
    # The name and first task were checked with the plan; the common case of
    # the rest is tested inline, _check_field names the problem otherwise.
    queue_name, priority, run_after = values["queue_name"], values["priority"], values["run_after"]
    if not (type(queue_name) is str and len(queue_name) <= QUEUE_NAME_LENGTH):
        _check_field("queue_name", queue_name)
    if not (type(priority) is int and SMALLINT_RANGE[0] <= priority <= SMALLINT_RANGE[1]):
        _check_field("priority", priority)
    if run_after is not None:
        _check_field("run_after", run_after)
    if creation_hook:
        try:
            import_string(creation_hook)(job)
        except Exception:
            logger.exception("Failed to create new job, creation hook raised an exception")
            return False
    return True


def _shown(value: Any) -> Any:
    # Job.STATES members repr as Job.STATES.X; their text is what users wrote.
    return str(value) if isinstance(value, str) else value


def _creation_plan(name: Any) -> tuple[str, str | None]:
    """The first task and the creation hook of a job name, checked once per name and call."""
    task_names = tasks.get_task_names(name) if isinstance(name, str) else None
    _check_field("name", name)
    if not task_names:
        raise JobConfigError(
            f"settings.JOBS[{name!r}] lists no tasks; give it at least one dotted task path."
        )
    if len(set(task_names)) < len(task_names):
        raise JobConfigError(
            f"settings.JOBS[{name!r}] lists a task more than once; a job moves from "
            "task to task by path, so give a repeated function a second name."
        )
    _check_field("next_task", task_names[0])
    return task_names[0], tasks.get_creation_hook_name(name)


def _created_payload(job: Job, workspace: bytes) -> dict[str, Any]:
    payload = {
        "name": job.name,
        "state": job.state,
        "next_task": job.next_task,
        "workspace": orjson.Fragment(workspace),
        "queue_name": job.queue_name,
        "priority": job.priority,
    }
    if job.run_after is not None:
        # Absent means NULL to the apply function.
        payload["run_after"] = _aware_run_after(job.run_after).isoformat()
    return payload


def _check_field(field: str, value: Any) -> None:
    """Raise InvalidJobError when value does not fit the projection's column."""
    if field in ("name", "next_task", "queue_name", "state"):
        max_length = QUEUE_NAME_LENGTH if field in ("queue_name", "state") else 100
        if not isinstance(value, str):
            raise InvalidJobError(f"Job {field} must be a string, not {type(value).__name__}.")
        if len(value) > max_length:
            raise InvalidJobError(
                f"Job {field} {value[:30]!r}... is {len(value)} characters long; "
                f"the column holds at most {max_length}. Use a shorter {field}."
            )
    elif field == "priority":
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidJobError(f"Job priority must be an integer, not {type(value).__name__}.")
        if not SMALLINT_RANGE[0] <= value <= SMALLINT_RANGE[1]:
            raise InvalidJobError(
                f"Job priority {value} is out of range; use an integer from "
                f"{SMALLINT_RANGE[0]} to {SMALLINT_RANGE[1]} (higher runs first)."
            )
    elif field == "run_after" and value is not None:
        _aware_run_after(value)
    elif field == "created":
        _aware_created(value)
    elif field == "unique_key" and value is not None:
        if not isinstance(value, str):
            raise InvalidJobError(
                f"Job unique_key must be a string or None, not {type(value).__name__}."
            )
        if "\x00" in value:
            raise InvalidJobError("Job unique_key holds a NUL character (\\x00); leave it out.")
        if not 1 <= len(value) <= UNIQUE_KEY_LENGTH:
            raise InvalidJobError(
                f"Job unique_key is {len(value)} characters long; use a key of 1 to "
                f"{UNIQUE_KEY_LENGTH} characters (e.g. 'invoice-42')."
            )


def _aware_run_after(value: Any) -> datetime.datetime:
    if not isinstance(value, datetime.datetime):
        raise InvalidJobError(
            f"Job run_after must be a datetime or None, not {type(value).__name__}."
        )
    return _aware("run_after", value, "timezone.now() + timedelta(minutes=10)")


def _aware_created(value: Any) -> datetime.datetime:
    if not isinstance(value, datetime.datetime):
        raise InvalidJobError(
            f"Job created must be a datetime, not {type(value).__name__}: it is when the job "
            "was enqueued (set it to age a job, e.g. timezone.now() - timedelta(days=2))."
        )
    return _aware("created", value, "timezone.now() - timedelta(days=2)")


# The years a stored time may name (as the database checks too): whatever its
# offset, every client can load the instant (Python's datetime holds years 1 to 9999).
YEARS = (2, 9998)


def _aware(field: str, value: datetime.datetime, example: str) -> datetime.datetime:
    if timezone.is_naive(value):
        if settings.USE_TZ:
            raise InvalidJobError(
                f"Job {field} {value.isoformat()} is a naive datetime while USE_TZ is on; "
                f"pass an aware one, e.g. {example}."
            )
        value = timezone.make_aware(value)
    if not YEARS[0] <= value.year <= YEARS[1]:
        raise InvalidJobError(
            f"Job {field} {value.isoformat()} is out of range; use a time from the year "
            f"{YEARS[0]} to the year {YEARS[1]}."
        )
    return value


def _to_json(field: str, value: Any) -> Any:
    if field == "run_after" and value is not None:
        return _aware_run_after(value).isoformat()
    if field == "created":
        return _aware_created(value).isoformat()
    return value


def _fingerprint(field: str, value: Any) -> Any:
    # Tasks change the workspace in place, so keep an encoded copy, not the object.
    if field == "workspace":
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            return object()
    return value


def _changed_fields(job: Job, update_fields: Iterable[str] | None) -> dict[str, Any]:
    loaded = job.__dict__.get("_dbq_loaded", {})
    names = TRACKED_FIELDS if update_fields is None else set(update_fields)
    changes = {}
    for field in TRACKED_FIELDS:
        if field not in names or field not in job.__dict__:
            continue
        value, before = job.__dict__[field], loaded.get(field)
        if isinstance(before, _WorkspaceText):
            before = _fingerprint(field, orjson.loads(str(before)))
        if field not in loaded or before != _fingerprint(field, value):
            changes[field] = value
    return changes


def _snapshot(job: Job, workspace: bytes | None = None) -> dict[str, Any]:
    """What save() compares against: the tracked fields, the workspace encoded.

    Built field by field so that the dict holds no container and CPython's
    garbage collector never tracks it (bulk_create makes thousands at once).
    """
    values = job.__dict__
    if "workspace" not in values or "state" not in values:
        # Loaded with some fields deferred: what was loaded.
        return {f: _fingerprint(f, values[f]) for f in TRACKED_FIELDS if f in values}
    snapshot = {field: values[field] for field in _PLAIN_FIELDS if field in values}
    # Job.STATES members are objects the collector tracks; their text compares equal.
    snapshot["state"] = str(values["state"])
    snapshot["workspace"] = workspace or _fingerprint("workspace", values["workspace"])
    return snapshot


def _mark_saved(
    job: Job, using: str, version: int, at: datetime.datetime, snapshot: dict[str, Any]
) -> None:
    """The job as stored at `version`: saved to `using`, compared against `snapshot` next time."""
    job._state.adding = False
    job._state.db = using
    values = job.__dict__
    values["version"] = version
    values["modified"] = at
    values["_dbq_loaded"] = snapshot
