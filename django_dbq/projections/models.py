"""The Job projection: the familiar django-db-queue table, written only by the ledger trigger."""

from __future__ import annotations

import inspect
import logging
from datetime import timedelta
from typing import Any, NamedTuple

import pgtrigger
from django.db import DatabaseError, models, router
from django.db.models import Count, Q
from django.db.models.base import DEFERRED, ModelState
from django.db.models.query_utils import DeferredAttribute
from django.db.models.signals import post_init, pre_init
from django.utils import timezone
from django.utils.module_loading import import_string

from django_dbq import tasks
from django_dbq.exceptions import InvalidJobError, ProjectionWriteError
from django_dbq.ids import uuid7
from django_dbq.triggers import SqlFunctionTrigger

logger = logging.getLogger(__name__)

DEFAULT_DELETE_JOBS_AFTER_HOURS = 24
# Job.queue_name's length, and so a queue's.
QUEUE_NAME_LENGTH = 20
# Job.unique_key's length, and the states in which a job holds its key.
UNIQUE_KEY_LENGTH = 200
UNIQUE_STATES = ["NEW", "READY", "PROCESSING", "STOPPING"]

_WRITE_REFUSED = (
    "django_dbq_job is a projection of the job ledger and is never written directly. "
    "Create jobs with Job.objects.create() or bulk_create(), change one with job.save() "
    "(recorded as an 'updated' event), and remove old finished jobs with "
    "Job.objects.delete_old() or manage.py delete_old_jobs."
)


class JobQuerySet(models.QuerySet):
    """Reads as usual; every write is translated into ledger events or refused."""

    def create(self, **kwargs: Any) -> Job:
        """Enqueue a job; with unique_key=..., on_duplicate="replace" updates the waiting one.

        A job whose unique key a waiting or running job holds is not made:
        DuplicateJobError, with that job as `.job`. With on_duplicate="replace",
        the waiting job gets this one's workspace, run_after and priority (an
        `updated` event) and is returned instead; a running one still raises.
        """
        if "on_duplicate" not in kwargs:
            return super().create(**kwargs)
        from django_dbq.projections.writes import duplicate_error, duplicate_of, enqueue_jobs

        on_duplicate = kwargs.pop("on_duplicate")
        if on_duplicate not in ("raise", "replace"):
            raise InvalidJobError(
                f"Job.objects.create(on_duplicate={on_duplicate!r}): use 'raise' (the default) "
                "or 'replace'."
            )
        job = self.model(**kwargs)
        self._for_write = True
        enqueue_jobs([job], using=self.db, on_duplicate=on_duplicate)
        held = duplicate_of(job)
        if held is None:
            return job
        holder_id, replaced = held
        if replaced:
            return self.model.objects.using(self.db).get(pk=holder_id)
        raise duplicate_error(job, self.db)

    def bulk_create(
        self,
        objs: Any,
        batch_size: int | None = None,
        on_duplicate: str = "skip",
        **kwargs: Any,
    ) -> list[Job]:
        """Enqueue the jobs with one `created` event each, one statement per batch.

        Jobs whose unique key a waiting or running job (or an earlier job of the
        call) holds are left out of the list returned; with on_duplicate="replace",
        the waiting job holding each key takes the last such job's workspace,
        run_after and priority.
        """
        from django_dbq.projections.writes import enqueue_jobs

        if kwargs.get("ignore_conflicts") or kwargs.get("update_conflicts"):
            raise ProjectionWriteError(
                "Job.objects.bulk_create() does not take ignore_conflicts or update_conflicts: "
                "a job is created once, by its 'created' event (give jobs a unique_key to "
                "leave out duplicates)."
            )
        if on_duplicate not in ("skip", "replace"):
            raise InvalidJobError(
                f"Job.objects.bulk_create(on_duplicate={on_duplicate!r}): use 'skip' (the "
                "default) or 'replace'."
            )
        return enqueue_jobs(
            list(objs), using=self.db, batch_size=batch_size, on_duplicate=on_duplicate
        )

    def update(self, **kwargs: Any) -> int:
        raise ProjectionWriteError(f"Job.objects.update() is refused. {_WRITE_REFUSED}")

    def bulk_update(self, objs: Any, fields: Any, batch_size: int | None = None) -> int:
        raise ProjectionWriteError(f"Job.objects.bulk_update() is refused. {_WRITE_REFUSED}")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise ProjectionWriteError(f"Deleting jobs through a queryset is refused. {_WRITE_REFUSED}")

    def cancel(self, reason: str = "") -> int:
        """Cancel these jobs: waiting ones at once, running ones after their current task."""
        from django_dbq.events.operations import cancel_jobs

        return len(cancel_jobs(self.values_list("id", flat=True), reason, using=self.db))

    def requeue(self, reason: str = "") -> int:
        """Put the FAILED and CANCELLED ones among these jobs back in their queue."""
        from django_dbq.events.operations import requeue_jobs

        return len(requeue_jobs(self.values_list("id", flat=True), reason, using=self.db))

    def release(self, reason: str = "") -> int:
        """Return the running ones among these jobs to their queue now: their worker is gone."""
        from django_dbq.events.operations import release_jobs

        return len(release_jobs(self.values_list("id", flat=True), reason, using=self.db))

    def as_of(self, when: Any) -> list[Job]:
        """These jobs as they were at `when`, rebuilt from the ledger (read-only instances).

        On Job.objects (no filter) the whole projection is rebuilt; on a filtered
        queryset, only the jobs it selects now. Jobs created after `when` are absent.
        """
        from django_dbq.projections.replay import projection_as_of

        ids = None if not self.query.where else list(self.values_list("id", flat=True))
        return projection_as_of(when, ids, using=self.db)

    def to_process(self, queue_name: str) -> JobQuerySet:
        """django-db-queue 3.3's jobs ready to run now in a queue, locked FOR UPDATE.

        A read: it claims nothing (workers claim by appending `claimed` events),
        so a loop that runs what it returns runs beside the workers, not with them.
        Locking needs a transaction, and UPDATE rights on the projection (the
        tables' owner; not the worker or app roles).
        """
        return self.select_for_update().filter(
            Q(queue_name=queue_name)
            & Q(state__in=(Job.STATES.READY, Job.STATES.NEW))
            & (Q(run_after__isnull=True) | Q(run_after__lte=timezone.now()))
        )

    def get_ready_or_none(self, queue_name: str, max_retries: int = 3) -> Job | None:
        """django-db-queue 3.3's first job ready in a queue (or None), retried on errors."""
        retries_left = max_retries
        while True:
            try:
                return self.to_process(queue_name).first()
            except DatabaseError as error:
                if retries_left == 0:
                    raise
                retries_left -= 1
                logger.warning(
                    "Caught %s when looking for a READY job, retrying %s more times",
                    error,
                    retries_left,
                )

    def delete_old(self, hours: int | None = None) -> int:
        """Remove finished jobs (and STOPPING ones no worker holds) created more than `hours` ago (default 24), with their history."""
        from django_dbq.events.append import delete_old_jobs

        hours = DEFAULT_DELETE_JOBS_AFTER_HOURS if hours is None else hours
        return delete_old_jobs(timezone.now() - timedelta(hours=hours), using=self.db)


JobManager = models.Manager.from_queryset(JobQuerySet)


class _InitFields(NamedTuple):
    names: frozenset[str]
    # Fields whose default is a value (the same object each time, as in Django)...
    constants: dict[str, Any]
    # ...and those whose default is made per instance (the id).
    made: tuple[tuple[str, Any], ...]


_INIT_FIELDS: dict[type, _InitFields] = {}


def _made(field: models.Field) -> bool:
    return field.has_default() and callable(field.default)


def _init_fields(cls: type[models.Model]) -> _InitFields:
    """The fields Job.__init__ sets itself: all of them, while none is a relation."""
    fields = [f for f in cls._meta.concrete_fields if not f.generated]
    if (
        any(f.is_relation for f in fields)  # the events' reverse relation takes no argument
        # Django sets each value with setattr(): a subclass's __setattr__, or a
        # property or descriptor of its own in place of a field's, sees them.
        or cls.__setattr__ is not object.__setattr__
        or any(
            type(inspect.getattr_static(cls, f.attname, None)) is not DeferredAttribute
            for f in fields
        )
    ):
        found = _InitFields(frozenset(), {}, ())  # Django's __init__ for every call
    else:
        found = _InitFields(
            frozenset(f.attname for f in fields),
            {f.attname: f.get_default() for f in fields if not _made(f)},
            tuple((f.attname, f.get_default) for f in fields if _made(f)),
        )
    _INIT_FIELDS[cls] = found
    return found


class Job(models.Model):
    """A job: the projection of its events, with django-db-queue's fields and API."""

    class STATES(models.TextChoices):
        NEW = "NEW"
        READY = "READY"
        PROCESSING = "PROCESSING"
        STOPPING = "STOPPING"
        FAILED = "FAILED"
        COMPLETE = "COMPLETE"
        CANCELLED = "CANCELLED"

    # Time-ordered (ids.py): a new job's index entries go where the recent ones are.
    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    created = models.DateTimeField(auto_now_add=True)
    modified = models.DateTimeField(auto_now=True)
    name = models.CharField(max_length=100)
    state = models.CharField(max_length=20, choices=STATES.choices, default=STATES.NEW)
    next_task = models.CharField(max_length=100, blank=True)
    workspace = models.JSONField(null=True, blank=True)
    queue_name = models.CharField(max_length=QUEUE_NAME_LENGTH, default="default")
    priority = models.SmallIntegerField(default=0)
    run_after = models.DateTimeField(null=True, blank=True)
    # The version of the last event applied: the ledger's order within this job.
    version = models.PositiveIntegerField(default=0, editable=False)
    # The worker holding a PROCESSING or STOPPING job, and until when its lease runs.
    claimed_by = models.CharField(max_length=200, null=True, editable=False)  # noqa: DJ001 (NULL: no holder)
    lease_until = models.DateTimeField(null=True, editable=False)
    # Failed attempts so far (JOBS' "retries"), and a cancellation pending on a running job.
    attempts = models.PositiveIntegerField(default=0, editable=False)
    cancel_requested = models.BooleanField(default=False, editable=False)
    # SHA-256 (hex) of the secret key with which the holder proves its claim
    # (events/sql/worker.sql); the key itself is never stored.
    lease_key = models.CharField(max_length=64, null=True, editable=False)  # noqa: DJ001 (NULL: no holder)
    # Of a unique job (created with unique_key=...): no second job with the same
    # key is created while this one waits or runs (the constraint below).
    unique_key = models.CharField(  # noqa: DJ001 (NULL: not unique)
        max_length=UNIQUE_KEY_LENGTH, null=True, blank=True, editable=False
    )

    objects = JobManager()

    class Meta:
        ordering = ["-priority", "created"]
        # One partial index instead of django-db-queue's five single-column ones: every
        # transition changes `state`, so each index on the table is written per event.
        indexes = [
            # Serves the worker's claim (events/sql/worker.sql) and the counts of
            # waiting jobs: the waiting jobs of a queue, those scheduled for later
            # (run_after after created) apart, the others in claim order.
            models.Index(
                "queue_name",
                models.ExpressionWrapper(
                    Q(run_after__isnull=False) & Q(run_after__gt=models.F("created")),
                    output_field=models.BooleanField(),
                ),
                models.F("priority").desc(),
                "created",
                name="django_dbq_job_ready",
                condition=Q(state__in=["NEW", "READY"]),
            ),
            # The jobs scheduled for later, by run_after: the claim reads the due
            # ones, the idle worker the next one, none the jobs still waiting.
            models.Index(
                fields=["queue_name", "run_after"],
                name="django_dbq_job_scheduled",
                condition=Q(state__in=["NEW", "READY"]) & Q(run_after__gt=models.F("created")),
            ),
            # The failed and cancelled jobs of each queue: counted exactly (dbq_stats)
            # and listed without reading the completed ones.
            models.Index(
                fields=["queue_name"],
                name="django_dbq_job_failed",
                condition=Q(state__in=["FAILED", "CANCELLED"]),
            ),
            # Serves lease expiry: the running jobs, soonest lease first.
            models.Index(
                "lease_until",
                name="django_dbq_job_leased",
                condition=Q(state__in=["PROCESSING", "STOPPING"]),
            ),
        ]
        constraints = [
            # At most one job per unique key waits or runs; a finished job frees
            # its key. Jobs without a key are not in the index.
            models.UniqueConstraint(
                fields=["unique_key"],
                name="django_dbq_job_unique_key",
                condition=Q(unique_key__isnull=False) & Q(state__in=UNIQUE_STATES),
            ),
        ]
        triggers = [
            SqlFunctionTrigger(
                name="protect_projection",
                level=pgtrigger.Statement,
                when=pgtrigger.Before,
                operation=pgtrigger.Insert
                | pgtrigger.Update
                | pgtrigger.Delete
                | pgtrigger.Truncate,
                # projections/sql/apply.sql, installed by migration 0007: lets
                # through the apply, replay and retention functions' statements,
                # refuses every other write.
                function="dbq_protect_projection_v2",
            ),
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Django's Model.__init__, done quicker for the usual Job(name=..., ...).

        Keyword arguments that all name plain fields (Job has no relations) are
        set field by field, with each field's default for the rest, as Django
        does; anything else (positional values, as loading rows passes them, or a
        property) goes through Django's own __init__. bulk_create of a thousand
        jobs builds a thousand of these, inside the caller's loop.
        """
        cls = type(self)
        fields = _INIT_FIELDS.get(cls) or _init_fields(cls)
        if (
            args
            or not kwargs.keys() <= fields.names
            or any(value is DEFERRED for value in kwargs.values())
            # A receiver may change the arguments, which Django checks afterwards.
            or (pre_init.receivers and pre_init.has_listeners(cls))
        ):
            super().__init__(*args, **kwargs)
            return
        # No pre_init receiver for the class here; post_init's are sent below.
        values = self.__dict__
        values["_state"] = ModelState()
        values.update(fields.constants)
        values.update(kwargs)
        for attname, default in fields.made:
            if attname not in kwargs:
                values[attname] = default()
        post_init.send(sender=cls, instance=self)

    def __str__(self) -> str:
        return f"{self.name} {self.id} {self.state}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Create the job (a `created` event) or record what changed (an `updated` event)."""
        from django_dbq.projections.writes import enqueue_jobs, record_changes

        using = kwargs.get("using") or router.db_for_write(Job, instance=self)
        if self._state.adding:
            enqueue_jobs([self], using=using)
        else:
            record_changes(self, update_fields=kwargs.get("update_fields"), using=using)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise ProjectionWriteError(f"job.delete() is refused. {_WRITE_REFUSED}")

    @classmethod
    def from_db(cls, db: str | None, field_names: Any, values: Any, **kwargs: Any) -> Job:
        from django_dbq.projections.writes import remember_loaded

        # kwargs: Django 6.1 passes fetch_mode; 5.2 passes nothing.
        instance = super().from_db(db, field_names, values, **kwargs)
        remember_loaded(instance, field_names)
        return instance

    def refresh_from_db(self, using: str | None = None, fields: Any = None, **kwargs: Any) -> None:
        from django_dbq.projections.writes import remember_loaded

        super().refresh_from_db(using=using, fields=fields, **kwargs)
        remember_loaded(self, fields)

    def cancel(self, reason: str = "") -> str | None:
        """Cancel the job: at once when waiting, after its current task when running.

        Returns the event appended ("cancelled" or "cancel_requested"), or None when
        the job had finished already; the instance is refreshed either way.
        """
        from django_dbq.events.operations import cancel_jobs

        using = self._state.db or router.db_for_write(Job, instance=self)
        kind = cancel_jobs([self.pk], reason, using=using).get(self.pk)
        self.refresh_from_db()
        return kind

    def requeue(self, reason: str = "") -> bool:
        """Put a FAILED or CANCELLED job back in its queue, resuming at its next task."""
        from django_dbq.events.operations import requeue_jobs

        using = self._state.db or router.db_for_write(Job, instance=self)
        done = self.pk in requeue_jobs([self.pk], reason, using=using)
        self.refresh_from_db()
        return done

    @staticmethod
    def get_queue_depths(*, exclude_future_jobs: bool = False) -> dict[str, int]:
        """Count NEW and READY jobs per queue; queues with none are left out."""
        waiting = Job.objects.filter(state__in=(Job.STATES.NEW, Job.STATES.READY))
        if exclude_future_jobs:
            waiting = waiting.filter(Q(run_after__isnull=True) | Q(run_after__lte=timezone.now()))
        rows = waiting.values("queue_name").order_by("queue_name").annotate(depth=Count("id"))
        return {row["queue_name"]: row["depth"] for row in rows}

    def update_next_task(self) -> None:
        """Advance next_task in memory to the task after the current one ('' after the last)."""
        self.next_task = tasks.get_next_task_name(self.name, self.next_task) or ""

    # django-db-queue 3.3's task and hook methods, for custom loops and tests that
    # call them; the worker itself runs tasks and hooks through django_dbq.runner.

    def run_next_task(self) -> None:
        """Call the job's next task with this job."""
        import_string(self.next_task)(self)

    def get_pre_task_hook_name(self) -> str | None:
        return tasks.get_pre_task_hook_name(self.name)

    def get_post_task_hook_name(self) -> str | None:
        return tasks.get_post_task_hook_name(self.name)

    def get_failure_hook_name(self) -> str | None:
        return tasks.get_failure_hook_name(self.name)

    def get_creation_hook_name(self) -> str | None:
        return tasks.get_creation_hook_name(self.name)

    def run_pre_task_hook(self) -> None:
        """Call the job's pre-task hook, if it has one, with this job."""
        hook_name = self.get_pre_task_hook_name()
        if hook_name:
            import_string(hook_name)(self)

    def run_post_task_hook(self) -> None:
        """Call the job's post-task hook, if it has one, with this job."""
        hook_name = self.get_post_task_hook_name()
        if hook_name:
            import_string(hook_name)(self)

    def run_failure_hook(self, exception: BaseException) -> None:
        """Call the job's failure hook, if it has one, with this job and the exception."""
        hook_name = self.get_failure_hook_name()
        if hook_name:
            import_string(hook_name)(self, exception)

    def run_creation_hook(self) -> None:
        """Call the job's creation hook, if it has one, with this job."""
        hook_name = self.get_creation_hook_name()
        if hook_name:
            import_string(hook_name)(self)


class QueueQuerySet(models.QuerySet):
    """Reads as usual; writes are refused: pause and resume through django_dbq.queues."""

    def update(self, **kwargs: Any) -> int:
        raise ProjectionWriteError(f"Queue.objects.update() is refused. {_QUEUE_WRITE_REFUSED}")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise ProjectionWriteError(f"Deleting queues is refused. {_QUEUE_WRITE_REFUSED}")


_QUEUE_WRITE_REFUSED = (
    "django_dbq_queue is a projection of the queue ledger (django_dbq_queueevent); pause "
    "and resume queues with django_dbq.queues.pause_queue() and resume_queue()."
)


class Queue(models.Model):
    """A queue that was ever paused: the projection of its events (the last one's state)."""

    name = models.CharField(max_length=QUEUE_NAME_LENGTH, primary_key=True)
    paused = models.BooleanField()
    # Of the last event: why it paused (NULL once resumed), who says they did it,
    # as which database role, and when.
    reason = models.TextField(null=True)  # noqa: DJ001 (NULL: resumed, no reason)
    by = models.TextField(null=True)  # noqa: DJ001 (NULL: the caller gave no name)
    role = models.TextField()
    since = models.DateTimeField()
    version = models.PositiveIntegerField()

    objects = models.Manager.from_queryset(QueueQuerySet)()

    class Meta:
        ordering = ["name"]
        triggers = [
            SqlFunctionTrigger(
                name="protect_queue_projection",
                level=pgtrigger.Statement,
                when=pgtrigger.Before,
                operation=pgtrigger.Insert
                | pgtrigger.Update
                | pgtrigger.Delete
                | pgtrigger.Truncate,
                # projections/sql/queues.sql, installed by migration 0013.
                function="dbq_protect_queue_projection_v1",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} {'paused' if self.paused else 'running'}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        raise ProjectionWriteError(f"queue.save() is refused. {_QUEUE_WRITE_REFUSED}")

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise ProjectionWriteError(f"queue.delete() is refused. {_QUEUE_WRITE_REFUSED}")
