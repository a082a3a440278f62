"""Running one task of a job with its hooks, as django-db-queue does, into an outcome event.

The order and failure rules are django-db-queue's:
- the pre-task hook runs first; if it raises, the task does not run and the job fails;
- when the task (or pre-task hook) raises, the failure hook runs with (job, exception);
- the post-task hook always runs last, also after a failure; if it raises, that is
  logged and the job's outcome stands.
"""

from __future__ import annotations

import functools
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.utils.module_loading import import_string

from django_dbq import jsonutil, tasks
from django_dbq.exceptions import DbqError

if TYPE_CHECKING:
    from django_dbq.projections.models import Job

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What running one task did: the event to append, and a fatal exception to re-raise."""

    job: Job
    kind: str
    payload: str
    fatal: BaseException | None = None


@functools.lru_cache(maxsize=1024)
def _load(path: str) -> Callable[..., Any]:
    return import_string(path)


def _hook(job: Job, getter: Callable[[str], str | None]) -> Callable[..., Any] | None:
    try:
        path = getter(job.name)
    except DbqError:
        return None
    return _load(path) if path else None


def run_task(job: Job, worker: str) -> Outcome:
    """Run the job's next task with its hooks; return the task_done/completed/failed outcome."""
    task = job.next_task
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        # Looked up before the task runs: a job removed from JOBS, or a task no
        # longer in its list, fails here without running anything.
        following = _following_task(job.name, task)
        task_function = _load(task)
        pre_task_hook = _hook(job, tasks.get_pre_task_hook_name)
        if pre_task_hook:
            pre_task_hook(job)
        task_function(job)
        job.next_task = following or ""
        job.state = job.STATES.COMPLETE if not job.next_task else job.STATES.READY
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are recorded too
        error = exc
        job.state = job.STATES.FAILED
        logger.exception("Job id=%s failed", job.pk)
        _run_failure_hook(job, exc)
    finally:
        _run_post_task_hook(job)
    duration = time.perf_counter() - started
    return _outcome(job, task, worker, duration, error)


def _following_task(job_name: str, task: str) -> str | None:
    task_names = tasks.get_task_names(job_name)
    if task not in task_names:
        raise DbqError(
            f"Task {task!r} is not in settings.JOBS[{job_name!r}] any more "
            f"(its tasks are {task_names}); requeue the job or restore the task."
        )
    return tasks.get_next_task_name(job_name, task)


def _run_failure_hook(job: Job, exc: BaseException) -> None:
    failure_hook = _safe(lambda: _hook(job, tasks.get_failure_hook_name), job, "failure hook")
    if failure_hook:
        logger.info("Running failure hook for job id=%s", job.pk)
        _safe(lambda: failure_hook(job, exc), job, "failure hook")


def _run_post_task_hook(job: Job) -> None:
    post_task_hook = _safe(lambda: _hook(job, tasks.get_post_task_hook_name), job, "post-task hook")
    if post_task_hook:
        _safe(lambda: post_task_hook(job), job, "post-task hook")


def _safe(call: Callable[[], Any], job: Job, what: str) -> Any:
    try:
        return call()
    except Exception:
        logger.exception("The %s of job id=%s raised; the job's outcome stands", what, job.pk)
        return None


def _outcome(
    job: Job, task: str, worker: str, duration: float, error: BaseException | None
) -> Outcome:
    payload: dict[str, Any] = {"task": task, "worker": worker, "duration": round(duration, 6)}
    if error is not None:
        kind = "failed"
        payload["error"] = _describe(error)
    elif job.next_task:
        kind, payload["next_task"] = "task_done", job.next_task
    else:
        kind = "completed"
    fatal = error if error is not None and not isinstance(error, Exception) else None
    try:
        encoded = jsonutil.dumps({**payload, "workspace": job.workspace}, "workspace")
    except DbqError as exc:
        # The workspace the task left cannot be stored: fail the job, keep the last stored one.
        job.state = job.STATES.FAILED
        payload["error"] = _describe(exc)
        return Outcome(job, "failed", jsonutil.dumps(payload), fatal)
    return Outcome(job, kind, encoded, fatal)


def _describe(error: BaseException) -> dict[str, str]:
    return {
        "type": f"{type(error).__module__}.{type(error).__qualname__}",
        "message": str(error),
        "traceback": "".join(traceback.format_exception(error)),
    }
