"""The ledgers: JobEvent, one immutable row per transition of a job, and
QueueEvent, one per pause or resumption of a queue."""

from __future__ import annotations

from typing import Any

import pgtrigger
from django.db import models

from django_dbq.exceptions import ProjectionWriteError
from django_dbq.projections.models import Job, Queue
from django_dbq.triggers import SqlFunctionTrigger


class EventKind(models.TextChoices):
    """The kinds of event a job's history holds; OCCURS_WHEN says when each is appended."""

    CREATED = "created"
    CLAIMED = "claimed"
    TASK_DONE = "task_done"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPING = "stopping"
    LEASE_RENEWED = "lease_renewed"
    LEASE_EXPIRED = "lease_expired"
    LEASE_REVOKED = "lease_revoked"
    RELEASED = "released"
    RETRIED = "retried"
    CANCELLED = "cancelled"
    CANCEL_REQUESTED = "cancel_requested"
    REQUEUED = "requeued"
    UPDATED = "updated"


OCCURS_WHEN: dict[str, str] = {
    EventKind.CREATED: "a job is enqueued (Job.objects.create, bulk_create, or an imported job)",
    EventKind.CLAIMED: "a worker takes a NEW or READY job to run its next task",
    EventKind.TASK_DONE: "a task finished and more tasks remain",
    EventKind.COMPLETED: "the last task finished",
    EventKind.FAILED: "a task or the pre-task hook raised",
    EventKind.STOPPING: "the worker running the job got SIGTERM or SIGINT",
    EventKind.LEASE_RENEWED: "the worker running a long task extends its lease (heartbeat)",
    EventKind.LEASE_EXPIRED: "a worker's lease on a job ran out; the job is READY again",
    EventKind.LEASE_REVOKED: (
        "an operator returns a running job whose worker is gone to its queue before its lease runs out"
    ),
    EventKind.RELEASED: "a worker gives back a job it claimed but did not start",
    EventKind.RETRIED: "a task failed and the job has retries left; READY again after a backoff",
    EventKind.CANCELLED: "a waiting job is cancelled (job.cancel(), cancel_jobs, the admin)",
    EventKind.CANCEL_REQUESTED: "a running job is asked to stop after its current task",
    EventKind.REQUEUED: "a FAILED or CANCELLED job is put back in its queue",
    EventKind.UPDATED: "job.save() or the admin changed fields of an existing job",
}


class BrinIndex(models.Index):
    """A BRIN index, without needing django.contrib.postgres in INSTALLED_APPS."""

    suffix = "brin"

    def create_sql(self, model: Any, schema_editor: Any, using: str = "", **kwargs: Any) -> Any:
        return super().create_sql(model, schema_editor, using=" USING brin", **kwargs)


class ClockTimestamp(models.Func):
    """clock_timestamp(): the time of each row, so a batch keeps its order in time."""

    template = "clock_timestamp()"
    output_field = models.DateTimeField()


class JobEvent(models.Model):
    """One transition of one job; (job, version) orders a job's history."""

    id = models.BigAutoField(primary_key=True)
    # No database foreign key: the projection can be dropped and rebuilt from here.
    job = models.ForeignKey(
        Job,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="events",
    )
    version = models.PositiveIntegerField()
    kind = models.CharField(max_length=20, choices=EventKind.choices)
    payload = models.JSONField(default=dict)
    at = models.DateTimeField(db_default=ClockTimestamp())
    # SHA-256(the hash of the job's previous event || this event's canonical
    # bytes), computed by the database as the event is appended (events/sql/
    # seals.sql).
    hash = models.BinaryField(null=True, editable=False)

    class Meta:
        ordering = ["job_id", "version"]
        constraints = [
            models.UniqueConstraint(fields=["job", "version"], name="django_dbq_event_job_version"),
        ]
        indexes = [
            # Events arrive in time order, so a BRIN index answers time ranges for little cost.
            BrinIndex(fields=["at"], name="django_dbq_event_at_brin"),
        ]
        triggers = [
            SqlFunctionTrigger(
                name="protect_ledger",
                level=pgtrigger.Statement,
                when=pgtrigger.Before,
                operation=pgtrigger.Update | pgtrigger.Delete | pgtrigger.Truncate,
                # events/sql/ledger.sql, installed by migration 0007: refuses every
                # change but the retention function's deletes.
                function="dbq_protect_ledger_v1",
            ),
            SqlFunctionTrigger(
                name="apply_events",
                level=pgtrigger.Statement,
                when=pgtrigger.After,
                operation=pgtrigger.Insert,
                referencing=pgtrigger.Referencing(new="new_events"),
                # projections/sql/apply.sql, installed by migration 0011.
                function="dbq_apply_events_v5",
            ),
            SqlFunctionTrigger(
                name="chain_event",
                level=pgtrigger.Row,
                when=pgtrigger.Before,
                operation=pgtrigger.Insert,
                condition=pgtrigger.Q(new__hash__isnull=True),
                # events/sql/seals.sql, installed by migration 0017: the hash of
                # an event appended without one.
                function="dbq_chain_event_v1",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.job_id} v{self.version} {self.kind}"


class QueueEventKind(models.TextChoices):
    """The kinds of event a queue's history holds; QUEUE_OCCURS_WHEN says when each is appended."""

    PAUSED = "paused"
    RESUMED = "resumed"


QUEUE_OCCURS_WHEN: dict[str, str] = {
    QueueEventKind.PAUSED: "an operator pauses a queue that is not paused (pause_queue)",
    QueueEventKind.RESUMED: "an operator resumes a paused queue (resume_queue)",
}


class QueueEvent(models.Model):
    """One pause or resumption of one queue; (queue_name, version) orders its history."""

    id = models.BigAutoField(primary_key=True)
    # No database foreign key (a queue's row comes from its first event, and the
    # projection can be rebuilt from here); the column is queue_name.
    queue = models.ForeignKey(
        Queue,
        on_delete=models.DO_NOTHING,
        db_column="queue_name",
        db_constraint=False,
        db_index=False,
        related_name="events",
    )
    version = models.PositiveIntegerField()
    kind = models.CharField(max_length=20, choices=QueueEventKind.choices)
    # reason (paused), by (who the caller says it is), role (the database's session user).
    payload = models.JSONField(default=dict)
    at = models.DateTimeField(db_default=ClockTimestamp())

    class Meta:
        ordering = ["queue_id", "version"]
        constraints = [
            models.UniqueConstraint(
                fields=["queue", "version"], name="django_dbq_queueevent_version"
            ),
        ]
        triggers = [
            SqlFunctionTrigger(
                name="protect_queue_ledger",
                level=pgtrigger.Statement,
                when=pgtrigger.Before,
                operation=pgtrigger.Update | pgtrigger.Delete | pgtrigger.Truncate,
                # events/sql/queues.sql, installed by migration 0013.
                function="dbq_protect_queue_ledger_v1",
            ),
            SqlFunctionTrigger(
                name="apply_queue_events",
                level=pgtrigger.Statement,
                when=pgtrigger.After,
                operation=pgtrigger.Insert,
                referencing=pgtrigger.Referencing(new="new_events"),
                # projections/sql/queues.sql, installed by migration 0013.
                function="dbq_apply_queue_events_v1",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.queue_id} v{self.version} {self.kind}"


class Schedule(models.Model):
    """A schedule of settings.JOBS ever seen by a worker: the last tick its workers enqueued.

    Written only by dbq_enqueue_ticks_v1 (events/sql/schedules.sql), which the
    workers call when a tick is due; its row lock makes each tick one job.
    """

    # The name of the schedule's job in settings.JOBS.
    name = models.CharField(max_length=100, primary_key=True)
    # When a worker first saw it: no tick before is enqueued.
    since = models.DateTimeField()
    last_tick = models.DateTimeField(null=True)
    last_job_id = models.UUIDField(null=True)
    enqueued_at = models.DateTimeField(null=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} last tick {self.last_tick}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        raise ProjectionWriteError(
            "schedule.save() is refused: django_dbq_schedule is written by the workers "
            "(dbq_enqueue_ticks_v1) as they enqueue ticks."
        )


class Seal(models.Model):
    """A signed checkpoint of the ledger: every event of an id after the previous
    seal's last and up to its own, all committed when it was taken
    (events/sql/seals.sql).

    Appended only by dbq_prepare_seal_v1 and signed by dbq_sign_seal_v1 in the
    same transaction (manage.py seal_ledger, the worker); never changed or
    removed, retention included.
    """

    id = models.BigIntegerField(primary_key=True)
    sealed_at = models.DateTimeField()
    # The event ids it covers: (after_event_id, last_event_id].
    after_event_id = models.BigIntegerField()
    last_event_id = models.BigIntegerField()
    # Events it covers, and in all seals so far.
    events = models.BigIntegerField()
    total_events = models.BigIntegerField()
    # sha256(the previous seal's digest || the digest of its window: dbq_seal_window_v1).
    digest = models.BinaryField()
    # HMAC-SHA-256 under settings.DBQ_LEDGER_KEY (django_dbq.seals.seal_message);
    # NULL only inside the transaction that appends it.
    mac = models.BinaryField(null=True)
    # The transaction that appended it: only that transaction may sign it.
    txid = models.BigIntegerField()

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["last_event_id"], name="django_dbq_seal_last_event")]
        triggers = [
            SqlFunctionTrigger(
                name="seal_signed",
                level=pgtrigger.Row,
                when=pgtrigger.After,
                operation=pgtrigger.Insert,
                timing=pgtrigger.Deferred,
                # events/sql/seals.sql, installed by migration 0017: at commit.
                function="dbq_require_mac_v1",
            ),
            SqlFunctionTrigger(
                name="protect_seals",
                level=pgtrigger.Statement,
                when=pgtrigger.Before,
                operation=pgtrigger.Update | pgtrigger.Delete | pgtrigger.Truncate,
                # events/sql/seals.sql, installed by migration 0017.
                function="dbq_protect_proof_v1",
            ),
        ]

    def __str__(self) -> str:
        return f"seal {self.id}: {self.total_events} events up to {self.last_event_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        raise ProjectionWriteError(
            "seal.save() is refused: seals are appended by manage.py seal_ledger or the "
            "worker (dbq_prepare_seal_v1)."
        )


class Retired(models.Model):
    """What retention removed of the events seal `seal_id` covers: their ids and
    hashes, so the seal still verifies; signed like a seal (events/sql/ledger.sql,
    dbq_retire_old_jobs_v1). Never changed or removed."""

    id = models.BigAutoField(primary_key=True)
    seal_id = models.BigIntegerField(db_index=True)
    retired_at = models.DateTimeField()
    events = models.BigIntegerField()
    # Each removed event as its id (8 bytes, big-endian) and hash (32 bytes), in id order.
    entries = models.BinaryField()
    # The transaction that wrote it: only that transaction may sign it.
    txid = models.BigIntegerField()
    mac = models.BinaryField(null=True)

    class Meta:
        ordering = ["id"]
        triggers = [
            SqlFunctionTrigger(
                name="retired_signed",
                level=pgtrigger.Row,
                when=pgtrigger.After,
                operation=pgtrigger.Insert,
                timing=pgtrigger.Deferred,
                # events/sql/seals.sql, installed by migration 0017: at commit.
                function="dbq_require_mac_v1",
            ),
            SqlFunctionTrigger(
                name="protect_retired",
                level=pgtrigger.Statement,
                when=pgtrigger.Before,
                operation=pgtrigger.Update | pgtrigger.Delete | pgtrigger.Truncate,
                # events/sql/seals.sql, installed by migration 0017.
                function="dbq_protect_proof_v1",
            ),
        ]

    def __str__(self) -> str:
        return f"retired {self.events} events of seal {self.seal_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        raise ProjectionWriteError(
            "retired.save() is refused: retirement records are appended by retention "
            "(Job.objects.delete_old())."
        )
