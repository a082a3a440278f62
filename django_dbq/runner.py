"""Running one task of a job with its hooks, as django-db-queue does, into an outcome event.

The order and failure rules are django-db-queue's:
- the pre-task hook runs first; if it raises, the task does not run and the job fails;
- when the task (or pre-task hook) raises, and the job has no retry left, the
  failure hook runs with (job, exception) once the `failed` event is recorded: a
  failure that is not recorded (the worker lost its lease, or died) runs no
  failure hook, since the job runs again; what the failure hook and the
  post-task hook after it change in the job is recorded after them (an
  `updated` event), as django-db-queue saved the job after its hooks;
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
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils import timezone
from django.utils.module_loading import import_string

from django_dbq import jsonutil, tasks
from django_dbq.exceptions import DbqError
from django_dbq.retries import retry_delay

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
    # Hooks that wait for the outcome to be recorded (a failure's): called with
    # whether it was, by the worker's loop once the outcome is settled; returns
    # the `updated` payload of what they changed in the job, or None.
    after: Callable[[bool], str | None] | None = None
    recorded: bool | None = None


@functools.lru_cache(maxsize=1024)
def _load(path: str) -> Callable[..., Any]:
    return import_string(path)


@dataclass(frozen=True)
class _Plan:
    """What settings.JOBS says about one job: each task's successor, and its hooks."""

    following: dict[str, str | None]
    pre_task_hook: str | None
    post_task_hook: str | None
    failure_hook: str | None
    retries: int
    config: dict[str, Any]


_plans: dict[str, _Plan] = {}


def _plan(job_name: str) -> _Plan:
    """The job's plan, read from settings.JOBS once per job name (UnknownJobError if absent)."""
    plan = _plans.get(job_name)
    if plan is None:
        config = tasks.get_job_config(job_name)
        names = tasks.get_task_names(job_name)
        plan = _Plan(
            following=dict(zip(names, [*names[1:], None], strict=True)),
            pre_task_hook=config.get(tasks.PRE_TASK_HOOK_KEY),
            post_task_hook=config.get(tasks.POST_TASK_HOOK_KEY),
            failure_hook=config.get(tasks.FAILURE_HOOK_KEY),
            retries=int(config.get("retries") or 0),
            config=config,
        )
        _plans[job_name] = plan
    return plan


@receiver(setting_changed)
def _forget_plans(setting: str, **kwargs: Any) -> None:
    if setting == "JOBS":
        _plans.clear()


def run_task(job: Job, worker: str) -> Outcome:
    """Run the job's next task with its hooks; return the task_done/completed/failed outcome."""
    task = job.next_task
    started = time.perf_counter()
    error: BaseException | None = None
    plan: _Plan | None = None
    retry_at: datetime | None = None
    after: Callable[[bool], str | None] | None = None
    try:
        # Looked up before the task runs: a job removed from JOBS, or a task no
        # longer in its list, fails here without running anything.
        plan = _plan(job.name)
        following = _following_task(plan, job.name, task)
        task_function = _load(task)
        if plan.pre_task_hook:
            _load(plan.pre_task_hook)(job)
        task_function(job)
        job.next_task = following or ""
        job.state = job.STATES.COMPLETE if not job.next_task else job.STATES.READY
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are recorded too
        error = exc
        logger.exception("Job id=%s failed", job.pk)
        retry_at = _retry_at(plan, job, exc)
        if retry_at is not None:
            # The failure hook waits for the last attempt; the job resumes at this
            # task with the workspace it had before it.
            job.state = job.STATES.READY
        else:
            job.state = job.STATES.FAILED
            after = _after_failure(plan, job, exc)
    finally:
        if after is None and plan and plan.post_task_hook:
            _run_hook(plan.post_task_hook, "post-task hook", job)
    duration = time.perf_counter() - started
    outcome = _outcome(job, task, worker, duration, error, retry_at)
    outcome.after = after  # set only for a failure, which _outcome records as `failed`
    return outcome


def _after_failure(
    plan: _Plan | None, job: Job, error: BaseException
) -> Callable[[bool], str | None]:
    """The failure and post-task hooks, to run once the job's `failed` event is or is not recorded.

    For a recorded failure, returns what the hooks changed in the job (as an
    `updated` payload) for the worker to record, or None.
    """

    def after(recorded: bool) -> str | None:
        from django_dbq.projections.writes import changes_since_tracking, start_tracking

        if recorded:
            # The job as its `failed` event left it.
            start_tracking(job)
        if recorded and plan and plan.failure_hook:
            _run_hook(plan.failure_hook, "failure hook", job, error)
        if plan and plan.post_task_hook:
            _run_hook(plan.post_task_hook, "post-task hook", job)
        return changes_since_tracking(job) if recorded else None

    return after


def _retry_at(plan: _Plan | None, job: Job, error: BaseException) -> datetime | None:
    """When a failed attempt runs again, or None when the job has no retry left."""
    # Only an ordinary exception is retried; SystemExit and friends stop the worker.
    if plan is None or not isinstance(error, Exception) or job.attempts >= plan.retries:
        return None
    try:
        delay = retry_delay(plan.config, job.attempts + 1, job)
    except Exception:
        # A backoff function that fails must not take the worker down; the job fails.
        logger.exception("The retry backoff of job id=%s raised; the job fails", job.pk)
        return None
    return timezone.now() + timedelta(seconds=delay)


def _following_task(plan: _Plan, job_name: str, task: str) -> str | None:
    if task not in plan.following:
        raise DbqError(
            f"Task {task!r} is not in settings.JOBS[{job_name!r}] any more "
            f"(its tasks are {list(plan.following)}); requeue the job or restore the task."
        )
    return plan.following[task]


def _run_hook(path: str, what: str, job: Job, *args: Any) -> None:
    """Run a failure or post-task hook; if it raises, log it and let the job's outcome stand."""
    _safe(lambda: _load(path)(job, *args), job, what)


def _safe(call: Callable[[], Any], job: Job, what: str) -> Any:
    try:
        return call()
    except Exception:
        logger.exception("The %s of job id=%s raised; the job's outcome stands", what, job.pk)
        return None


def _outcome(
    job: Job,
    task: str,
    worker: str,
    duration: float,
    error: BaseException | None,
    retry_at: datetime | None = None,
) -> Outcome:
    payload: dict[str, Any] = {"task": task, "worker": worker, "duration": round(duration, 6)}
    if retry_at is not None:
        # No workspace: the next attempt starts from the one the job had.
        payload.update(
            error=_describe(error), attempt=job.attempts + 1, run_after=retry_at.isoformat()
        )
        return Outcome(job, "retried", jsonutil.dumps(payload))
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
    # jsonb cannot hold a NUL, which an error's message may carry (bytes decoded, say).
    return {
        "type": jsonutil.without_nul(f"{type(error).__module__}.{type(error).__qualname__}"),
        "message": jsonutil.without_nul(str(error)),
        "traceback": jsonutil.without_nul("".join(traceback.format_exception(error))),
    }
