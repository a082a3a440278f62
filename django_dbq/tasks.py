"""Reading settings.JOBS: the task list and hook paths of each job.

Both forms of the setting work: ``{"name": {"tasks": [...], "failure_hook": ...}}``
and the older ``{"name": ["path.to.task", ...]}``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from django_dbq.exceptions import UnknownJobError
from django_dbq.taskrun import TASK_JOB, TASK_JOB_CONFIG

TASK_LIST_KEY = "tasks"
PRE_TASK_HOOK_KEY = "pre_task_hook"
POST_TASK_HOOK_KEY = "post_task_hook"
FAILURE_HOOK_KEY = "failure_hook"
CREATION_HOOK_KEY = "creation_hook"
HOOK_KEYS = (PRE_TASK_HOOK_KEY, POST_TASK_HOOK_KEY, FAILURE_HOOK_KEY, CREATION_HOOK_KEY)


def get_jobs_setting() -> dict[str, Any]:
    """Return settings.JOBS as written (an empty dict when unset)."""
    return getattr(settings, "JOBS", {}) or {}


def known_job_names() -> list[str]:
    """The job names this process can run: settings.JOBS and the built-in task job."""
    return [*(name for name in get_jobs_setting() if isinstance(name, str)), TASK_JOB]


def get_job_config(job_name: str) -> dict[str, Any]:
    """Return the job's config in dict form, or raise UnknownJobError naming the known jobs."""
    if job_name == TASK_JOB:
        # Built in: runs Django Tasks' @task functions (django_dbq.backends.LedgerBackend).
        return TASK_JOB_CONFIG
    jobs = get_jobs_setting()
    try:
        config = jobs[job_name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(map(str, jobs))) or "none"
        raise UnknownJobError(
            f"No job named {job_name!r} in settings.JOBS (known jobs: {known}). "
            "Add it to settings.JOBS or use one of the known names."
        ) from None
    if isinstance(config, (list, tuple)):
        return {TASK_LIST_KEY: list(config)}
    return config


def get_task_names(job_name: str) -> list[str]:
    """Return the dotted paths of the job's tasks, in order."""
    return list(get_job_config(job_name).get(TASK_LIST_KEY) or [])


def get_next_task_name(job_name: str, current_task: str | None = None) -> str | None:
    """Return the task after current_task (the first when None), or None after the last."""
    tasks = get_task_names(job_name)
    if current_task is None:
        return tasks[0] if tasks else None
    index = tasks.index(current_task) + 1
    return tasks[index] if index < len(tasks) else None


def _get_hook_name(job_name: str, key: str) -> str | None:
    return get_job_config(job_name).get(key)


def get_pre_task_hook_name(job_name: str) -> str | None:
    """Return the dotted path of the job's pre-task hook, or None."""
    return _get_hook_name(job_name, PRE_TASK_HOOK_KEY)


def get_post_task_hook_name(job_name: str) -> str | None:
    """Return the dotted path of the job's post-task hook, or None."""
    return _get_hook_name(job_name, POST_TASK_HOOK_KEY)


def get_failure_hook_name(job_name: str) -> str | None:
    """Return the dotted path of the job's failure hook, or None."""
    return _get_hook_name(job_name, FAILURE_HOOK_KEY)


def get_creation_hook_name(job_name: str) -> str | None:
    """Return the dotted path of the job's creation hook, or None."""
    return _get_hook_name(job_name, CREATION_HOOK_KEY)
