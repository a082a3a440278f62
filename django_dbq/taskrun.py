"""Running a Django Tasks `@task` as a django-dbq job (see django_dbq.backends).

The job `django_dbq.task` is built in: its one task, `run`, reads the task's path,
arguments and context flag from the workspace, calls it, and keeps its return
value in the workspace. This module imports the Tasks framework only when a task
runs, so that settings without it still pass `manage.py check`.
"""

from __future__ import annotations

import json
from typing import Any

TASK_JOB = "django_dbq.task"
TASK_JOB_CONFIG = {"tasks": ["django_dbq.taskrun.run"]}


def as_json(value: Any, what: str) -> Any:
    """value as JSON gives it back, or TypeError naming what cannot be stored."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"The task's {what} must be JSON ({exc}); pass ids and plain values instead of objects."
        ) from None


def _may_import(path: str) -> bool:
    """Whether the module of a task path may be imported to look for the task there.

    Importing runs a module's top-level code, so only modules that are imported
    already, or that belong to an installed app or to the settings' package, are
    imported, and never a __main__ module (`unittest.__main__` runs a test run).
    """
    import sys

    from django.apps import apps
    from django.conf import settings

    module = path.rpartition(".")[0]
    if not module or "__main__" in module.split("."):
        return False
    if module in sys.modules:
        return True
    roots = {app.name for app in apps.get_app_configs()}
    roots.add((settings.SETTINGS_MODULE or "").partition(".")[0])
    return any(module == root or module.startswith(f"{root}.") for root in roots if root)


def load_task(path: Any) -> Any:
    """The `@task` at path; refuses anything else, whatever the workspace says.

    The workspace is data that any role allowed to enqueue can write, so the path
    must name a task declared with the Tasks framework for this backend, never an
    arbitrary callable (such as subprocess.call), and importing it must not run a
    module no task lives in (see _may_import).
    """
    from django.utils.module_loading import import_string

    from django_dbq.backends import LedgerBackend, Task

    task = import_string(path) if isinstance(path, str) and _may_import(path) else None
    if not (
        isinstance(task, Task)
        and task.module_path == path
        and isinstance(task.get_backend(), LedgerBackend)
    ):
        raise TypeError(
            f"{path!r} is not a task of the LedgerBackend; a django_dbq.task job runs "
            "only functions decorated with @task whose backend is LedgerBackend."
        )
    return task


def run(job: Any) -> None:
    """Call the Django task the job holds and keep its return value."""
    from django_dbq.backends import TaskContext

    task = load_task(job.workspace["task"])
    args, kwargs = job.workspace["args"], job.workspace["kwargs"]
    if job.workspace.get("takes_context"):
        result = task.get_backend().get_result(str(job.id))
        value = task.call(TaskContext(task_result=result), *args, **kwargs)
    else:
        value = task.call(*args, **kwargs)
    job.workspace["return_value"] = as_json(value, "return value")
