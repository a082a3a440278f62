"""A Django Tasks backend that runs `@task` functions through the job ledger.

    TASKS = {"default": {"BACKEND": "django_dbq.backends.LedgerBackend"}}

Works with Django 6's django.tasks and, on Django 5.2, with the django-tasks
backport. `task.enqueue(...)` creates a job (one `created` event, in the caller's
transaction), `manage.py worker` runs it, and `task.get_result(id)` reads the
job and its events back as a TaskResult.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.core.exceptions import ValidationError

from django_dbq.exceptions import InvalidJobError
from django_dbq.taskrun import TASK_JOB, as_json, load_task

try:  # Django 6
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task, TaskContext, TaskError, TaskResult, TaskResultStatus
    from django.tasks.exceptions import TaskResultDoesNotExist
except ImportError:  # Django 5.2 with the django-tasks backport
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskContext, TaskError, TaskResult, TaskResultStatus
    from django_tasks.exceptions import TaskResultDoesNotExist

__all__ = ["LedgerBackend", "Task", "TaskContext"]

STATUS = {
    "NEW": TaskResultStatus.READY,
    "READY": TaskResultStatus.READY,
    "PROCESSING": TaskResultStatus.RUNNING,
    "STOPPING": TaskResultStatus.RUNNING,
    "COMPLETE": TaskResultStatus.SUCCESSFUL,
    "FAILED": TaskResultStatus.FAILED,
    "CANCELLED": TaskResultStatus.FAILED,
}


class LedgerBackend(BaseTaskBackend):
    """Tasks become django-dbq jobs; results are read from the job and its events."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> TaskResult:
        from django_dbq.models import Job

        self.validate_task(task)
        try:
            workspace = {
                "task": task.module_path,
                "args": as_json(list(args), "arguments"),
                "kwargs": as_json(dict(kwargs), "keyword arguments"),
                "takes_context": task.takes_context,
            }
        except TypeError as exc:
            raise InvalidJobError(str(exc)) from None
        job = Job.objects.create(
            name=TASK_JOB,
            queue_name=task.queue_name,
            priority=task.priority,
            run_after=task.run_after,
            workspace=workspace,
        )
        return self._result(job, task, [])

    def get_result(self, result_id: str) -> TaskResult:
        from django_dbq.models import Job

        try:
            job = Job.objects.get(pk=uuid.UUID(str(result_id)), name=TASK_JOB)
        except (Job.DoesNotExist, ValueError, ValidationError):
            raise TaskResultDoesNotExist(result_id) from None
        events = list(
            job.events.filter(kind__in=["claimed", "retried", "failed"]).values_list(
                "kind", "at", "payload"
            )
        )
        return self._result(job, load_task(job.workspace["task"]), events)

    def _result(
        self, job: Any, task: Any, events: list[tuple[str, Any, dict[str, Any]]]
    ) -> TaskResult:
        claims = [(at, payload) for kind, at, payload in events if kind == "claimed"]
        errors = [
            TaskError(
                exception_class_path=p["error"]["type"], traceback=p["error"].get("traceback", "")
            )
            for kind, _, p in events
            if kind in ("retried", "failed") and p.get("error")
        ]
        status = STATUS[job.state]
        finished = status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)
        result = TaskResult(
            task=task,
            id=str(job.id),
            status=status,
            enqueued_at=job.created,
            started_at=claims[0][0] if claims else None,
            finished_at=job.modified if finished else None,
            last_attempted_at=claims[-1][0] if claims else None,
            args=job.workspace["args"],
            kwargs=job.workspace["kwargs"],
            backend=self.alias,
            errors=errors,
            worker_ids=[payload.get("worker", "") for _, payload in claims],
        )
        object.__setattr__(result, "_return_value", job.workspace.get("return_value"))
        return result
