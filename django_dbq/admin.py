"""The admin: jobs with their timeline, actions that append events, read-only ledgers,
and the queues ever paused, with actions that pause and resume them."""

from __future__ import annotations

import uuid
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.functional import cached_property

from django_dbq import tasks
from django_dbq.events.models import JobEvent, QueueEvent
from django_dbq.exceptions import InvalidQueueError
from django_dbq.projections.models import Job, Queue
from django_dbq.queues import pause_queue, resume_queue


class PauseReasonForm(ActionForm):
    """The action bar, with the reason a pause records."""

    reason = forms.CharField(required=False, max_length=1000, label="Reason (for Pause)")


def _by(request: HttpRequest) -> str:
    """Who the admin says pauses or resumes: its user."""
    return f"admin:{request.user.get_username()}"


def _pause_or_resume(
    model_admin: admin.ModelAdmin, request: HttpRequest, names: list[str], pause: bool
) -> None:
    """Pause (with the action bar's reason) or resume each named queue, and say what happened."""
    changed, unchanged = [], []
    try:
        for name in sorted(set(names)):
            if pause:
                done = pause_queue(name, request.POST.get("reason", ""), by=_by(request))
            else:
                done = resume_queue(name, by=_by(request))
            (changed if done else unchanged).append(name)
    except InvalidQueueError as exc:
        model_admin.message_user(request, str(exc), messages.ERROR)
        return
    verb, state = ("Paused", "Paused already") if pause else ("Resumed", "Not paused")
    model_admin.message_user(
        request, f"{verb} {len(changed)} queues: {', '.join(changed) or '-'}.", messages.SUCCESS
    )
    if unchanged:
        model_admin.message_user(request, f"{state}: {', '.join(unchanged)}.", messages.INFO)


# Changelists count no more rows than this; a list of more is counted from the
# table's estimate (unfiltered) or shown as "10,000+" (filtered).
COUNT_UP_TO = 10_000


class _AtLeast(int):
    """A count that stopped at COUNT_UP_TO + 1: "10,000+" on the page, a number to the paginator."""

    def __str__(self) -> str:
        return f"{COUNT_UP_TO:,}+"


class _About(int):
    """The planner's estimate of a table's rows: "about 1,234,567" on the page."""

    def __str__(self) -> str:
        return f"about {int(self):,}"


class LedgerPaginator(Paginator):
    """Counts a changelist of the ledger or the projection without reading their history.

    Unfiltered, a table of more than COUNT_UP_TO rows is counted from its estimate
    (pg_class.reltuples, which ANALYZE and autovacuum keep current); a filtered
    list is counted up to COUNT_UP_TO + 1 rows. Either reads a page's worth of
    work, however many million events lie behind it; pages past the count are
    reached through filters.
    """

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not queryset.query.where:
            estimate = _estimated_rows(queryset)
            if estimate > COUNT_UP_TO:
                return _About(estimate)
        found = queryset.order_by()[: COUNT_UP_TO + 1].count()
        return _AtLeast(found) if found > COUNT_UP_TO else found


def _estimated_rows(queryset: QuerySet) -> int:
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(
            "SELECT c.reltuples::bigint FROM pg_catalog.pg_class c WHERE c.oid = %s::regclass",
            [connections[queryset.db].ops.quote_name(queryset.model._meta.db_table)],
        )
        (rows,) = cursor.fetchone()
    return rows


class _ListFilterOfLiveJobs(admin.SimpleListFilter):
    """A filter whose choices come from the waiting and running jobs, not from history.

    Django's own filter of a field lists its distinct values over the whole
    table; this one reads the jobs that wait or run (through their indexes), and
    keeps a value chosen in the URL. Finished jobs of other values are found with
    ?<field>=<value>.
    """

    field = ""

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        jobs = model_admin.get_queryset(request)
        values = set(self.more_values())
        # One query per partial index: waiting jobs (django_dbq_job_ready), running
        # ones (django_dbq_job_leased).
        for states in (("NEW", "READY"), ("PROCESSING", "STOPPING")):
            values |= set(
                jobs.filter(state__in=states)
                .order_by()
                .values_list(self.field, flat=True)
                .distinct()
            )
        if self.value():
            values.add(self.value())
        return [(value, value) for value in sorted(values)]

    def more_values(self) -> list[str]:
        return []

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(**{self.field: self.value()}) if self.value() else queryset


class JobNameFilter(_ListFilterOfLiveJobs):
    title = "name"
    parameter_name = field = "name"

    def more_values(self) -> list[str]:
        return list(tasks.known_job_names())


class QueueNameFilter(_ListFilterOfLiveJobs):
    title = "queue name"
    parameter_name = field = "queue_name"

    def more_values(self) -> list[str]:
        return list(Queue.objects.values_list("name", flat=True))


class JobEventInline(admin.TabularInline):
    """The job's timeline, oldest first; nothing in it can be added, changed or removed."""

    model = JobEvent
    fields = ("at", "version", "kind", "worker", "task", "duration", "error")
    readonly_fields = fields
    ordering = ("version",)
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="worker")
    def worker(self, event: JobEvent) -> str:
        return (event.payload or {}).get("worker", "")

    @admin.display(description="task")
    def task(self, event: JobEvent) -> str:
        return (event.payload or {}).get("task", "")

    @admin.display(description="duration")
    def duration(self, event: JobEvent) -> str:
        seconds = (event.payload or {}).get("duration")
        return f"{seconds:.3f} s" if isinstance(seconds, (int, float)) else ""

    @admin.display(description="error")
    def error(self, event: JobEvent) -> str:
        error = (event.payload or {}).get("error") or {}
        return f"{error.get('type', '')}: {error.get('message', '')}" if error else ""


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "name",
        "queue_name",
        "state",
        "priority",
        "attempts",
        "run_after",
        "created",
        "modified",
    )
    list_filter = ("state", QueueNameFilter, JobNameFilter)
    paginator = LedgerPaginator
    show_full_result_count = False
    # A unique key exactly, or text of the workspace.
    search_fields = ("=unique_key", "workspace__icontains")
    ordering = ("-created",)
    inlines = (JobEventInline,)
    actions = ("requeue", "cancel", "run_now", "release", "pause_queues", "resume_queues")
    action_form = PauseReasonForm
    readonly_fields = (
        "state",
        "next_task",
        "attempts",
        "version",
        "claimed_by",
        "lease_until",
        "unique_key",
        "created",
        "modified",
    )
    fields = ("name", "queue_name", "priority", "run_after", "workspace", *readonly_fields)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> Any:
        """A job id finds that job; anything else a unique key or the workspace's text."""
        try:
            return queryset.filter(id=uuid.UUID(search_term.strip())), False
        except ValueError:
            return super().get_search_results(request, queryset, search_term)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Jobs leave the ledger only through delete_old_jobs.
        return False

    @admin.action(description="Requeue the FAILED or CANCELLED jobs")
    def requeue(self, request: HttpRequest, queryset: QuerySet) -> None:
        done = queryset.requeue(reason=f"admin: {request.user}")
        self.message_user(request, f"Requeued {done} jobs.", messages.SUCCESS)

    @admin.action(description="Cancel (waiting now, running after their task)")
    def cancel(self, request: HttpRequest, queryset: QuerySet) -> None:
        done = queryset.cancel(reason=f"admin: {request.user}")
        self.message_user(request, f"Cancelled or asked to stop {done} jobs.", messages.SUCCESS)

    @admin.action(description="Release running jobs whose worker is gone (before their lease ends)")
    def release(self, request: HttpRequest, queryset: QuerySet) -> None:
        done = queryset.release(reason=f"admin: {request.user}")
        self.message_user(
            request, f"Returned {done} running jobs to their queue.", messages.SUCCESS
        )

    @admin.action(description="Pause these jobs' queues (with the reason above)")
    def pause_queues(self, request: HttpRequest, queryset: QuerySet) -> None:
        names = list(queryset.values_list("queue_name", flat=True).distinct())
        _pause_or_resume(self, request, names, pause=True)

    @admin.action(description="Resume these jobs' queues")
    def resume_queues(self, request: HttpRequest, queryset: QuerySet) -> None:
        names = list(queryset.values_list("queue_name", flat=True).distinct())
        _pause_or_resume(self, request, names, pause=False)

    @admin.action(description="Run now (clear run_after)")
    def run_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        done = 0
        for job in queryset.filter(
            state__in=[Job.STATES.NEW, Job.STATES.READY], run_after__isnull=False
        ):
            job.run_after = None
            job.save(update_fields=["run_after"])
            done += 1
        self.message_user(request, f"{done} jobs can run now.", messages.SUCCESS)


@admin.register(JobEvent)
class JobEventAdmin(admin.ModelAdmin):
    """The ledger, read-only for every user: events are never added, changed or deleted here."""

    list_display = ("at", "job_id", "version", "kind")
    list_filter = ("kind",)
    paginator = LedgerPaginator
    show_full_result_count = False
    search_fields = ("=job__id",)
    ordering = ("-id",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class QueueEventInline(admin.TabularInline):
    """The queue's history, oldest first: read-only."""

    model = QueueEvent
    fields = ("at", "version", "kind", "reason", "by", "role")
    readonly_fields = fields
    ordering = ("version",)
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="reason")
    def reason(self, event: QueueEvent) -> str:
        return (event.payload or {}).get("reason") or ""

    @admin.display(description="by")
    def by(self, event: QueueEvent) -> str:
        return (event.payload or {}).get("by") or ""

    @admin.display(description="role")
    def role(self, event: QueueEvent) -> str:
        return (event.payload or {}).get("role") or ""


@admin.register(Queue)
class QueueAdmin(admin.ModelAdmin):
    """The queues ever paused, as they are now; actions pause and resume them."""

    list_display = ("name", "paused", "reason", "by", "role", "since")
    list_filter = ("paused",)
    actions = ("pause", "resume")
    action_form = PauseReasonForm
    readonly_fields = list_display
    fields = list_display
    inlines = (QueueEventInline,)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A queue is paused by name (pause_queue) or from the jobs admin.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Viewing and the actions only: a queue's row is the projection of its events.
        return False

    @admin.action(description="Pause (with the reason above)", permissions=["view"])
    def pause(self, request: HttpRequest, queryset: QuerySet) -> None:
        _pause_or_resume(self, request, list(queryset.values_list("name", flat=True)), pause=True)

    @admin.action(description="Resume", permissions=["view"])
    def resume(self, request: HttpRequest, queryset: QuerySet) -> None:
        _pause_or_resume(self, request, list(queryset.values_list("name", flat=True)), pause=False)


@admin.register(QueueEvent)
class QueueEventAdmin(admin.ModelAdmin):
    """The queue ledger, read-only for every user."""

    list_display = ("at", "queue_id", "version", "kind", "payload")
    list_filter = ("kind",)
    ordering = ("-id",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
