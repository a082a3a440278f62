"""django-db-queue 3.3's Worker: process_job, _process_job, last_job_finished, sleep, shutdown.

The scenarios of 3.3's tests.py, each checked against the ledger as well as the
projection: the events written for the job, and a replay equal to the live table.
"""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from io import StringIO
from pathlib import Path
from unittest import mock

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection
from django.utils import timezone

from django_dbq.management.commands import worker as worker_command
from django_dbq.management.commands.worker import Worker
from django_dbq.models import Job
from django_dbq.projections.replay import verify_projection
from django_dbq.testing import with_database
from tests import jobs as test_jobs

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent

COMPAT_JOBS = {
    "pre_hooked": {
        "tasks": ["tests.jobs.task_one"],
        "pre_task_hook": "tests.jobs.output_pre_task_hook",
    },
    "post_hooked": {
        "tasks": ["tests.jobs.task_one"],
        "post_task_hook": "tests.jobs.output_post_task_hook",
    },
    "failing": {
        "tasks": ["tests.jobs.failing_task"],
        "failure_hook": "tests.jobs.output_failure_hook",
    },
    "failing_saves": {
        "tasks": ["tests.jobs.failing_task"],
        "failure_hook": "tests.jobs.saving_output_failure_hook",
        "post_task_hook": "tests.jobs.output_post_task_hook",
    },
    "shuts_down": ["tests.jobs.shuts_down_its_worker"],
    "signals": ["tests.jobs.signals_its_process"],
    "cuts_connection": ["tests.jobs.cuts_its_connection"],
}


@pytest.fixture(autouse=True)
def compat_jobs(settings):
    settings.JOBS = {**settings.JOBS, **COMPAT_JOBS}


@pytest.fixture(autouse=True)
def clear_calls():
    test_jobs.CALLS.clear()
    test_jobs.WORKERS.clear()


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """Worker("default", 1) installs its handlers, as in 3.3; pytest gets its own back."""
    names = [name for name in ("SIGINT", "SIGTERM", "SIGQUIT") if hasattr(signal, name)]
    saved = {name: signal.getsignal(getattr(signal, name)) for name in names}
    yield
    for name, handler in saved.items():
        signal.signal(getattr(signal, name), handler)


def kinds(job):
    return list(job.events.values_list("kind", flat=True))


# process_job: 3.3's three cases, with a mock for self as 3.3's tests have it.

NOW = timezone.now()


@pytest.fixture
def mock_worker():
    worker = mock.MagicMock()
    worker.queue_name = "default"
    worker.rate_limit_in_seconds = 5
    worker.last_job_finished = None
    with (
        mock.patch("django_dbq.management.commands.worker.sleep") as sleep,
        mock.patch("django.utils.timezone.now", return_value=NOW),
    ):
        yield worker, sleep


@pytest.mark.parametrize(
    "finished_ago, runs",
    [(None, True), (timedelta(seconds=2), False), (timedelta(seconds=7), True)],
    ids=["no_previous_job", "previous_job_too_soon", "previous_job_long_ago"],
)
def test_process_job__sleeps_a_second_then_runs_a_job_unless_the_last_ended_too_recently(
    mock_worker, finished_ago, runs
):
    worker, sleep = mock_worker
    worker.last_job_finished = None if finished_ago is None else NOW - finished_ago

    Worker.process_job(worker)

    sleep.assert_called_once_with(1)
    # Nothing else on self is called (3.3's tests give a mock for self).
    assert worker.method_calls == ([mock.call._process_job()] if runs else [])
    assert worker.last_job_finished == (NOW if runs else NOW - finished_ago)


def test_process_job__runs_one_job_then_waits_out_the_rate_limit():
    first = Job.objects.create(name="testjob")
    second = Job.objects.create(name="testjob")
    worker = Worker("default", 5)
    assert worker.last_job_finished is None

    with mock.patch("django_dbq.management.commands.worker.sleep") as sleep:
        worker.process_job()
        worker.process_job()

    assert sleep.call_args_list == [mock.call(1), mock.call(1)]
    assert kinds(first) == ["created", "claimed", "completed"]
    assert kinds(second) == ["created"]
    assert worker.last_job_finished is not None
    assert verify_projection().ok


def test_command_module__keeps_3_3_names():
    assert worker_command.sleep is time.sleep
    assert worker_command.DEFAULT_QUEUE_NAME == "default"


# _process_job: one job per call, its outcome recorded before it returns.


def test__process_job__completes_a_job_and_records_it_before_returning():
    job = Job.objects.create(name="testjob")
    worker = Worker("default", 1)

    assert worker._process_job() is None

    assert Job.objects.get().state == Job.STATES.COMPLETE
    assert kinds(job) == ["created", "claimed", "completed"]
    assert job.events.get(kind="claimed").payload["worker"] == worker.worker_id
    assert worker.current_job is None and not worker._held
    assert verify_projection().ok


@pytest.mark.django_db(transaction=False)
def test__process_job__works_inside_a_test_transaction_as_3_3_testcases_run_it():
    job = Job.objects.create(name="twotasks")

    Worker("default", 1)._process_job()
    Worker("default", 1)._process_job()

    assert Job.objects.get().state == Job.STATES.COMPLETE
    assert kinds(job) == ["created", "claimed", "task_done", "claimed", "completed"]
    assert verify_projection().ok


def test__process_job__leaves_a_job_of_another_queue_untouched():
    job = Job.objects.create(name="testjob", queue_name="lol")

    assert Worker("default", 1)._process_job() is None

    assert Job.objects.get().state == Job.STATES.NEW
    assert kinds(job) == ["created"]


def test__process_job__with_no_job_ready_returns_none_and_writes_nothing(count_rows):
    worker = Worker("default", 1)

    assert worker._process_job() is None

    assert count_rows("django_dbq_jobevent") == 0
    assert worker.current_job is None


def test__process_job__moves_a_multi_task_job_one_task_per_call():
    job = Job.objects.create(name="twotasks")
    worker = Worker("default", 1)

    worker._process_job()
    after_one = Job.objects.get()
    worker._process_job()

    assert (after_one.state, after_one.next_task) == (Job.STATES.READY, "tests.jobs.task_two")
    assert after_one.workspace == {"one": True}
    done = Job.objects.get()
    assert (done.state, done.next_task) == (Job.STATES.COMPLETE, "")
    assert done.workspace == {"one": True, "two": True}
    assert kinds(job) == ["created", "claimed", "task_done", "claimed", "completed"]
    assert verify_projection().ok


@pytest.mark.parametrize("name, hook", [("pre_hooked", "pre"), ("post_hooked", "post")])
def test__process_job__keeps_what_the_pre_and_post_task_hooks_write_in_the_workspace(name, hook):
    job = Job.objects.create(name=name)

    Worker("default", 1)._process_job()

    job = Job.objects.get()
    assert job.state == Job.STATES.COMPLETE
    assert job.workspace["output"] == f"{hook} task hook ran"
    assert job.workspace["job_id"] == str(job.id)
    assert kinds(job) == ["created", "claimed", "completed"]
    assert job.events.get(kind="completed").payload["workspace"] == job.workspace
    assert verify_projection().ok


def test__process_job__a_task_that_raises_fails_the_job_then_the_failure_hook_runs():
    job = Job.objects.create(name="failing")

    Worker("default", 1)._process_job()

    job = Job.objects.get()
    assert job.state == Job.STATES.FAILED
    assert job.workspace["output"] == "failure hook ran"
    assert "uh oh" in job.workspace["exception"]
    assert job.workspace["job_id"] == str(job.id)
    # The failure is recorded first; what the hook changed follows, recorded by
    # the worker as 3.3's worker saved the job after its hooks.
    assert kinds(job) == ["created", "claimed", "failed", "updated"]
    assert job.events.get(kind="failed").payload["error"]["message"] == "uh oh"
    assert job.events.get(kind="updated").payload == {"workspace": job.workspace}
    assert verify_projection().ok


def test__process_job__a_failure_hook_that_saves_and_a_post_hook_after_it_are_both_kept():
    job = Job.objects.create(name="failing_saves")

    Worker("default", 1)._process_job()

    job = Job.objects.get()
    assert (job.state, job.workspace["output"]) == ("FAILED", "post task hook ran")
    assert job.workspace["exception"] == "uh oh"
    # The hook's own save, then the worker's record of what the post hook changed.
    assert kinds(job) == ["created", "claimed", "failed", "updated", "updated"]
    updates = job.events.filter(kind="updated").order_by("version")
    assert [u.payload["workspace"]["output"] for u in updates] == [
        "failure hook ran",
        "post task hook ran",
    ]
    assert verify_projection().ok


def test__process_job__runs_the_hooks_in_run_order():
    Job.objects.create(name="hooks", workspace={"tag": "ok"})
    Job.objects.create(name="hooks", workspace={"tag": "bad", "fail": True})
    worker = Worker("default", 1)

    worker._process_job()
    worker._process_job()

    assert test_jobs.CALLS == [
        ("pre", "ok"),
        ("task", "ok"),
        ("post", "ok"),
        ("pre", "bad"),
        ("task", "bad"),
        ("failure", "bad", "ValueError"),
        ("post", "bad"),
    ]


def test__process_job__renews_the_lease_through_a_long_task(settings, runs_file):
    settings.DBQ_LEASE_SECONDS = 1
    job = Job.objects.create(name="counted_once", workspace={"sleep": 1.6})

    Worker("default", 1)._process_job()

    history = kinds(job)
    assert history[:2] == ["created", "claimed"] and history[-1] == "completed", history
    assert set(history[2:-1]) == {"lease_renewed"}, history
    assert Job.objects.get().state == Job.STATES.COMPLETE
    assert verify_projection().ok


# Shutdown: `stopping` for the job the worker holds, then the task's outcome (as run()).


@pytest.mark.parametrize("wait", [0, 5], ids=["quick_task", "task_that_outlasts_the_signal"])
def test_shutdown__in_a_task_records_stopping_then_the_tasks_outcome(wait):
    job = Job.objects.create(name="shuts_down", workspace={"wait": wait})
    worker = Worker("default", 1)
    test_jobs.WORKERS.append(worker)

    worker._process_job()

    assert kinds(job) == ["created", "claimed", "stopping", "completed"]
    assert Job.objects.get().state == Job.STATES.COMPLETE
    assert worker.alive is False
    if wait:  # the heartbeat recorded it while the task still ran
        assert test_jobs.CALLS == [("seen", Job.STATES.STOPPING)]
    assert verify_projection().ok


def test_shutdown__on_a_real_sigterm_in_the_task_records_stopping_then_completes():
    job = Job.objects.create(name="signals", workspace={"wait": 5})
    worker = Worker("default", 1)

    worker._process_job()

    assert test_jobs.CALLS == [("seen", Job.STATES.STOPPING)]
    assert kinds(job) == ["created", "claimed", "stopping", "completed"]
    assert worker.alive is False
    assert verify_projection().ok


def test_shutdown__sigterm_to_a_process_in_process_job_records_stopping_and_exits_0(runs_file):
    job = Job.objects.create(name="counted_once", workspace={"sleep": 1.5})
    script = (
        "from django_dbq.management.commands.worker import Worker; "
        "Worker('default', 1).process_job()"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "django", "shell", "-c", script, "--settings=tests.settings"],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": with_database(
                os.environ["DATABASE_URL"], connection.settings_dict["NAME"]
            ),
        },
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not test_jobs.runs_of(job.id) and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 0, err[-2000:]
    assert kinds(job) == ["created", "claimed", "stopping", "completed"]
    assert verify_projection().ok


def test_shutdown__leaves_a_job_the_worker_does_not_hold_as_it_is_and_says_why(caplog):
    # 3.3's test: an unclaimed job set as current_job by hand.
    job = Job.objects.create(name="testjob")
    worker = Worker("default", 1)
    worker.current_job = job

    worker.shutdown(None, None)

    assert Job.objects.get().state == Job.STATES.NEW
    assert kinds(job) == ["created"]
    assert worker.alive is False
    assert "event=shutdown_job_not_held" in caplog.text
    assert "only its holder records stopping" in caplog.text


# Database errors: raised, as in 3.3, with nothing left held.


def test__process_job__a_lost_connection_is_raised_after_the_outcome_is_recorded_anyway():
    job = Job.objects.create(name="cuts_connection")
    worker = Worker("default", 1)

    with pytest.raises(DatabaseError):
        worker._process_job()

    assert kinds(job) == ["created", "claimed", "completed"]
    assert not worker._held and not worker._pending
    assert verify_projection().ok


def test__process_job__gives_back_a_job_it_claimed_and_could_not_start(monkeypatch):
    job = Job.objects.create(name="testjob")
    worker = Worker("default", 1)

    def no_thread():
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(worker, "_beating", no_thread)
    with pytest.raises(RuntimeError):
        worker._process_job()

    assert kinds(job) == ["created", "claimed", "released"]
    assert Job.objects.get().state == Job.STATES.NEW and not worker._held
    assert verify_projection().ok


# The worker command's dry run, as 3.3's tests run it.


@pytest.mark.parametrize(
    "options, queue, seconds",
    [
        ({}, "default", "0"),
        ({"queue_name": "test_queue", "rate_limit": 1}, "test_queue", "1"),
        ({"rate_limit": 1_000_000}, "default", "1000000"),
        ({"rate_limit": 0.5}, "default", "0.5"),
    ],
    ids=["no_args", "queue_name", "whole_seconds", "fraction"],
)
def test_worker_command__dry_run_prints_3_3s_starting_line(options, queue, seconds):
    stdout = StringIO()

    call_command("worker", dry_run=True, stdout=stdout, **options)

    assert stdout.getvalue().strip() == (
        f'Starting job worker for queue "{queue}" with rate limit of one job per {seconds} second(s)'
    )
