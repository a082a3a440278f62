"""The admin: jobs with their timeline, actions that append events, a read-only ledger."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from django_dbq.events.models import JobEvent
from django_dbq.projections.models import Job


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
    list_filter = ("state", "queue_name", "name")
    search_fields = ("workspace__icontains",)
    ordering = ("-created",)
    inlines = (JobEventInline,)
    actions = ("requeue", "cancel", "run_now", "release")
    readonly_fields = (
        "state",
        "next_task",
        "attempts",
        "version",
        "claimed_by",
        "lease_until",
        "created",
        "modified",
    )
    fields = ("name", "queue_name", "priority", "run_after", "workspace", *readonly_fields)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> Any:
        """A job id finds that job; anything else searches the workspace's text."""
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
    search_fields = ("=job__id",)
    ordering = ("-id",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
