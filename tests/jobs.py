"""Tasks and hooks named in the test settings' JOBS."""

import os
import signal
import sys
import time

CALLS = []


def task_one(job):
    job.workspace["one"] = True


def task_two(job):
    job.workspace["two"] = True


def creation_hook(job):
    job.workspace["hooked"] = True


def querying_creation_hook(job):
    """A hook that reads the database, as hooks that look things up do."""
    from django_dbq.models import Job

    job.workspace["waiting"] = Job.objects.filter(state="NEW").count()


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


def failing_after_losing_its_job(job):
    """Fails after an operator released the job (as after a lost lease): its failure is not recorded."""
    from django_dbq.models import Job

    CALLS.append(("task", job.workspace.get("tag")))
    Job.objects.filter(pk=job.pk).release("taken back by an operator")
    raise ValueError("too late to count")


def failure_hook_that_reads_the_job(job, exc):
    """Notes the state the ledger holds when the failure hook runs."""
    from django_dbq.models import Job

    CALLS.append(("failure", Job.objects.get(pk=job.pk).state))


def notes_neighbour_state(job):
    """Notes the state the ledger holds for the job named in the workspace, as the task starts."""
    from django_dbq.models import Job

    CALLS.append(("neighbour", Job.objects.get(pk=job.workspace["neighbour"]).state))


def exiting_task(job):
    sys.exit(3)


def unstorable_workspace_task(job):
    job.workspace["bad"] = object()


def record_run(job):
    """Count a run of this task in the file named by DBQ_TEST_RUNS (one line per run).

    A file, not a table: fault tests cut the workers' database connections, and
    the count must not depend on them.
    """
    line = f"{job.id} {job.next_task} {os.getpid()}\n".encode()
    fd = os.open(os.environ["DBQ_TEST_RUNS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    if job.workspace.get("sleep"):
        time.sleep(job.workspace["sleep"])


# A second path to the same function: a job's task list may not repeat a path.
record_run_again = record_run


def runs_of(job_id):
    with open(os.environ["DBQ_TEST_RUNS"]) as runs:
        return [line.split() for line in runs if line.startswith(str(job_id))]


def sleep_on_first_run(job):
    """Sleep long on the first run of the job (a worker will be killed in it), not after."""
    first = not runs_of(job.id)
    record_run(job)
    if first:
        time.sleep(60)


def kill_worker_on_first_run(job):
    """Kills its own worker process on the first run of the job (a segfault, the OOM killer)."""
    first = not runs_of(job.id)
    record_run(job)
    if first:
        os.kill(os.getpid(), signal.SIGKILL)


def kill_worker(job):
    """Kills its own worker process every time (a task that always segfaults)."""
    record_run(job)
    os.kill(os.getpid(), signal.SIGKILL)


SEEN = {}


def saving_task(job):
    """Saves progress mid-task, as django-db-queue users do, and notes what it saw."""
    SEEN.update(created=job.created, modified=job.modified, lease_until=job.lease_until)
    job.save()  # nothing changed yet: no event
    job.workspace["progress"] = 50
    job.save()


def saving_slowly(job):
    """Saves its progress every 0.1 s for workspace["seconds"] (a deploy's SIGTERM comes in it)."""
    record_run(job)
    for step in range(int(job.workspace.get("seconds", 1) * 10)):
        time.sleep(0.1)
        job.workspace["progress"] = step
        job.save()


def flaky_task(job):
    """Fails until it has failed workspace["fail_times"] times; records what it saw."""
    CALLS.append(("task", job.attempts, dict(job.workspace)))
    job.workspace["touched"] = job.attempts  # must not survive a failed attempt
    if job.attempts < job.workspace["fail_times"]:
        raise ValueError(f"flaky failure {job.attempts + 1}")


def backoff_of_attempt(job, attempt):
    return 100 * attempt


def broken_backoff(job, attempt):
    raise ZeroDivisionError("backoff bug")


# django-db-queue 3.3's hooks (its tests.py), which note what ran in the workspace.
def output_pre_task_hook(job):
    job.workspace["output"] = "pre task hook ran"
    job.workspace["job_id"] = str(job.id)


def output_post_task_hook(job):
    job.workspace["output"] = "post task hook ran"
    job.workspace["job_id"] = str(job.id)


def output_failure_hook(job, exception):
    """3.3's failure hook: it changes the workspace and leaves the save to the worker."""
    job.workspace["output"] = "failure hook ran"
    job.workspace["exception"] = str(exception)
    job.workspace["job_id"] = str(job.id)


def saving_output_failure_hook(job, exception):
    """The same, saving the job itself (an application's save: the worker holds it no longer)."""
    output_failure_hook(job, exception)
    job.save()


def failing_task(job):
    raise Exception("uh oh")


# The worker a test runs tasks in, for the tasks that stop it.
WORKERS = []


def _note_stopping_seen(job):
    """With workspace["wait"], wait until the ledger says STOPPING (the heartbeat recorded it)."""
    from django_dbq.models import Job

    deadline = time.monotonic() + job.workspace.get("wait", 0)
    state = Job.objects.get(pk=job.pk).state
    while state != Job.STATES.STOPPING and time.monotonic() < deadline:
        time.sleep(0.02)
        state = Job.objects.get(pk=job.pk).state
    CALLS.append(("seen", state))


def shuts_down_its_worker(job):
    WORKERS[-1].shutdown(signal.SIGTERM, None)
    _note_stopping_seen(job)


def signals_its_process(job):
    os.kill(os.getpid(), signal.SIGTERM)
    _note_stopping_seen(job)


def cuts_its_connection(job):
    """Has the database end the connection the task's worker records with (a restart, say)."""
    import psycopg
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    params = {k: v for k, v in connection.get_connection_params().items() if k != "context"}
    with psycopg.connect(**params, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])


def record_unique_key(job):
    job.workspace["unique_key"] = job.unique_key
