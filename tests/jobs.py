"""Tasks and hooks named in the test settings' JOBS."""

import os
import sys
import time

from django.db import connection

CALLS = []


def task_one(job):
    job.workspace["one"] = True


def task_two(job):
    job.workspace["two"] = True


def creation_hook(job):
    job.workspace["hooked"] = True


def failing_creation_hook(job):
    raise RuntimeError("creation hook refused the job")


def record(what):
    def hook(job, *args):
        CALLS.append((what, job.workspace.get("tag"), *(type(a).__name__ for a in args)))

    return hook


pre_task_hook = record("pre")
post_task_hook = record("post")
failure_hook = record("failure")


def recorded_task(job):
    CALLS.append(("task", job.workspace.get("tag")))
    if job.workspace.get("fail"):
        raise ValueError(f"task failed on purpose: {job.workspace['tag']}")


def failing_pre_task_hook(job):
    CALLS.append(("pre", job.workspace.get("tag")))
    raise RuntimeError("pre-task hook failed")


def failing_post_task_hook(job):
    CALLS.append(("post", job.workspace.get("tag")))
    raise RuntimeError("post-task hook failed")


def failing_failure_hook(job, exc):
    CALLS.append(("failure", job.workspace.get("tag")))
    raise RuntimeError("failure hook failed")


def exiting_task(job):
    sys.exit(3)


def unstorable_workspace_task(job):
    job.workspace["bad"] = object()


def record_run(job):
    """Count a run of this task in a side table, to prove each task body runs once."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO dbq_test_runs (job_id, task, pid) VALUES (%s, %s, %s)",
            [job.id, job.next_task, os.getpid()],
        )
    if job.workspace.get("sleep"):
        time.sleep(job.workspace["sleep"])


def sleep_on_first_run(job):
    """Sleep long on the first run of the job (a worker will be killed in it), not after."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM dbq_test_runs WHERE job_id = %s", [job.id])
        earlier = cursor.fetchone()[0]
    record_run(job)
    if not earlier:
        time.sleep(job.workspace.get("sleep", 60))
