"""Worker processes against a real PostgreSQL: concurrency, kill -9, signals, lost connections."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection

from django_dbq.events.claims import expire_leases
from django_dbq.models import Job
from django_dbq.projections.replay import verify_projection
from django_dbq.testing import with_database
from tests.jobs import runs_of

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent


def database_url_of_this_test():
    """The URL of the database this test runs in, for the worker processes."""
    return with_database(os.environ["DATABASE_URL"], connection.settings_dict["NAME"])


STARTED = []


@pytest.fixture(autouse=True)
def stop_leftover_workers():
    """A failing test must not leave worker processes attached to the test database."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
        process.communicate()


def start_worker(*args, **env):
    process = subprocess.Popen(
        [sys.executable, "-m", "django", "worker", *args, "--settings=tests.settings"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url_of_this_test(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    STARTED.append(process)
    return process


def wait_for(condition, timeout=20.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {condition.__doc__ or condition}")


def finish(process, timeout=60):
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"worker did not exit:\n{err[-3000:]}") from None
    return process.returncode, out, err


def children_of(pid):
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return found.stdout.split()


def kinds(job_id):
    return list(Job.objects.get(pk=job_id).events.values_list("kind", flat=True))


def assert_each_task_ran_once(runs_file, jobs, tasks_per_job):
    runs = Counter(tuple(line.split()[:2]) for line in runs_file.read_text().splitlines())
    assert len(runs) == len(jobs) * tasks_per_job
    assert set(runs.values()) == {1}, [key for key, n in runs.items() if n > 1][:5]


def test_several_workers__run_every_task_exactly_once(runs_file):
    jobs = Job.objects.bulk_create([Job(name="counted") for _ in range(1500)])

    workers = [start_worker("--burst") for _ in range(3)]
    results = [finish(worker) for worker in workers]

    assert [code for code, _, _ in results] == [0, 0, 0], results[0][2][-2000:]
    assert Job.objects.filter(state=Job.STATES.COMPLETE).count() == 1500
    assert_each_task_ran_once(runs_file, jobs, tasks_per_job=2)
    claimed_by = {
        e.payload["pid"] for e in Job.objects.get(pk=jobs[-1].pk).events.filter(kind="claimed")
    }
    assert claimed_by
    assert verify_projection().ok


def test_concurrency_option__runs_several_processes(runs_file):
    jobs = Job.objects.bulk_create(
        [Job(name="counted_once", workspace={"sleep": 0.01}) for _ in range(200)]
    )

    code, out, err = finish(start_worker("--burst", "--concurrency", "2"))

    assert code == 0, err[-2000:]
    assert_each_task_ran_once(runs_file, jobs, tasks_per_job=1)
    pids = {line.split()[2] for line in runs_file.read_text().splitlines()}
    assert len(pids) == 2


@pytest.mark.parametrize(
    "option", ["DBQ_TEST_SERVER_SIDE_BINDING", "DBQ_TEST_PREPARE_THRESHOLD", "DBQ_TEST_POOL"]
)
def test_connection_options__the_worker_drains_with_each(runs_file, option):
    jobs = Job.objects.bulk_create([Job(name="counted") for _ in range(30)])
    saving = Job.objects.create(name="saves")

    code, _, err = finish(start_worker("--burst", **{option: "1"}))

    assert code == 0, err[-2000:]
    assert "database_error" not in err, err[-2000:]
    assert Job.objects.filter(state=Job.STATES.COMPLETE).count() == len(jobs) + 1
    assert Job.objects.get(pk=saving.pk).workspace["progress"] == 50
    assert verify_projection().ok


def test_concurrency_option__restarts_a_child_that_dies_and_the_job_completes(runs_file):
    job = Job.objects.create(name="kills_its_worker_once")
    supervisor = start_worker("--concurrency", "2", DBQ_LEASE_SECONDS="1.5")

    wait_for(lambda: Job.objects.get(pk=job.pk).state == Job.STATES.COMPLETE, timeout=30)
    wait_for(lambda: len(children_of(supervisor.pid)) == 2)  # the dead one was replaced
    supervisor.send_signal(signal.SIGTERM)
    code, _, err = finish(supervisor)

    assert code == 0, err[-2000:]
    assert "event=worker_died" in err and "status=-9" in err
    # The job its worker died in counts an attempt (retried, WorkerLost).
    assert kinds(job.id) == ["created", "claimed", "retried", "claimed", "completed"]
    assert len(runs_of(job.id)) == 2


def test_burst__returns_jobs_of_a_dead_worker_before_it_decides_the_queue_is_empty(runs_file):
    job = Job.objects.create(name="kills_its_worker_once")
    crashed = start_worker("--burst", DBQ_LEASE_SECONDS="1")
    assert finish(crashed)[0] == -9
    time.sleep(1.1)

    code, _, err = finish(start_worker("--burst", DBQ_LEASE_SECONDS="1"))

    assert code == 0, err[-2000:]
    assert kinds(job.id) == ["created", "claimed", "retried", "claimed", "completed"]


def test_kill_9__the_job_is_finished_by_another_worker_after_the_lease(runs_file):
    job = Job.objects.create(name="killed_once")
    first = start_worker(DBQ_LEASE_SECONDS="2")
    wait_for(lambda: runs_of(job.id))
    os.kill(first.pid, signal.SIGKILL)
    first.wait()

    code, _, err = finish(start_worker("--max-jobs", "1", DBQ_LEASE_SECONDS="2"))

    assert code == 0, err[-2000:]
    assert Job.objects.get(pk=job.pk).state == Job.STATES.COMPLETE
    assert kinds(job.id) == ["created", "claimed", "retried", "claimed", "completed"]
    claims = Job.objects.get(pk=job.pk).events.filter(kind="claimed")
    assert claims[0].payload["pid"] == first.pid != claims[1].payload["pid"]
    assert len(runs_of(job.id)) == 2
    assert verify_projection().ok


def test_sigterm__records_stopping_finishes_the_task_and_exits_0(runs_file):
    job = Job.objects.create(name="counted_once", workspace={"sleep": 1.5})
    waiting = Job.objects.create(name="counted_once")
    worker = start_worker()
    wait_for(lambda: runs_of(job.id))

    worker.send_signal(signal.SIGTERM)
    code, _, err = finish(worker)

    assert code == 0, err[-2000:]
    assert kinds(job.id) == ["created", "claimed", "stopping", "completed"]
    assert Job.objects.get(pk=job.pk).state == Job.STATES.COMPLETE
    assert Job.objects.get(pk=waiting.pk).state in (Job.STATES.NEW, Job.STATES.COMPLETE)
    assert verify_projection().ok


def test_sigterm__a_task_that_saves_its_progress_finishes_and_completes(runs_file):
    job = Job.objects.create(name="saves_slowly", workspace={"seconds": 1.5})
    worker = start_worker()
    wait_for(lambda: runs_of(job.id))
    time.sleep(0.3)

    worker.send_signal(signal.SIGTERM)
    code, _, err = finish(worker)

    assert code == 0, err[-2000:]
    history = kinds(job.id)
    assert history[:2] == ["created", "claimed"] and history[-1] == "completed", history
    assert "stopping" in history and history.index("stopping") < len(history) - 2, history
    assert set(history[2:-1]) == {"updated", "stopping"}, history
    done = Job.objects.get(pk=job.pk)
    assert (done.state, done.workspace["progress"]) == (Job.STATES.COMPLETE, 14)
    assert verify_projection().ok


def test_second_signal__exits_at_once_and_the_lease_recovers_the_job_without_an_attempt(
    runs_file,
):
    job = Job.objects.create(name="killed_once")
    worker = start_worker(DBQ_LEASE_SECONDS="2")
    wait_for(lambda: runs_of(job.id))

    worker.send_signal(signal.SIGINT)
    wait_for(lambda: "stopping" in kinds(job.id))
    started = time.monotonic()
    worker.send_signal(signal.SIGINT)
    code, _, _ = finish(worker)

    assert code == 1 and time.monotonic() - started < 5
    code, _, err = finish(start_worker("--max-jobs", "1", DBQ_LEASE_SECONDS="2"))
    assert code == 0, err[-2000:]
    assert kinds(job.id) == [
        "created",
        "claimed",
        "stopping",
        "lease_expired",
        "claimed",
        "completed",
    ]
    # Stopped by its operator, not lost to its task: no attempt counted.
    assert Job.objects.get(pk=job.pk).attempts == 0


def test_heartbeat__a_long_task_keeps_its_job_past_the_lease(runs_file):
    job = Job.objects.create(name="counted_once", workspace={"sleep": 4})
    runner = start_worker("--max-jobs", "1", DBQ_LEASE_SECONDS="1.5")
    wait_for(lambda: runs_of(job.id))
    rival = start_worker(DBQ_LEASE_SECONDS="1.5")

    code, _, err = finish(runner)
    rival.send_signal(signal.SIGTERM)
    finish(rival)

    assert code == 0, err[-2000:]
    history = kinds(job.id)
    assert history.count("claimed") == 1 and history.count("lease_renewed") >= 2
    assert history[-1] == "completed" and "lease_expired" not in history
    assert len(runs_of(job.id)) == 1


def terminate_other_backends():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def test_lost_connections__workers_reconnect_and_lose_or_repeat_nothing(runs_file):
    jobs = Job.objects.bulk_create(
        [Job(name="counted", workspace={"sleep": 0.002}) for _ in range(400)]
    )
    workers = [start_worker("--burst") for _ in range(2)]
    # Four cuts once the workers run (they may be slow to start on a busy machine).
    killed, cuts, deadline = 0, 0, time.monotonic() + 60
    while cuts < 4 and time.monotonic() < deadline:
        time.sleep(0.3)
        if cuts or Job.objects.exclude(state=Job.STATES.NEW).exists():
            killed += terminate_other_backends()
            cuts += 1

    results = [finish(worker) for worker in workers]

    assert killed > 0
    assert [code for code, _, _ in results] == [0, 0], results[0][2][-2000:]
    assert "event=database_error" in results[0][2] + results[1][2]
    assert Job.objects.filter(state=Job.STATES.COMPLETE).count() == 400
    assert_each_task_ran_once(runs_file, jobs, tasks_per_job=2)
    assert verify_projection().ok


def test_crash_loop__a_task_that_always_kills_its_worker_fails_after_its_retries(runs_file):
    crashing = Job.objects.create(name="kills_its_worker")  # retries 2, 0.5 s apart
    fine = Job.objects.bulk_create([Job(name="counted_once") for _ in range(20)])
    supervisor = start_worker("--concurrency", "2", DBQ_LEASE_SECONDS="1")

    wait_for(lambda: Job.objects.get(pk=crashing.pk).state == Job.STATES.FAILED, timeout=60)
    wait_for(lambda: not Job.objects.exclude(state__in=["COMPLETE", "FAILED"]).exists())
    wait_for(lambda: len(children_of(supervisor.pid)) == 2)  # the dead ones were replaced
    supervisor.send_signal(signal.SIGTERM)
    code, _, err = finish(supervisor)

    assert code == 0, err[-2000:]
    job = Job.objects.get(pk=crashing.pk)
    history = list(job.events.order_by("version"))
    assert [e.kind for e in history] == [
        "created", "claimed", "retried", "claimed", "retried", "claimed", "failed",
    ]  # fmt: skip
    assert len(runs_of(job.id)) == 3 and job.attempts == 3
    errors = [e.payload["error"] for e in history if e.kind in ("retried", "failed")]
    assert {e["type"] for e in errors} == {"django_dbq.exceptions.WorkerLost"}
    assert "attempt 3 of 3" in errors[-1]["message"]
    # Each retry waited for the job's backoff (0.5 s, constant: not jittered).
    retried = [e for e in history if e.kind == "retried"]
    claimed_at = [e.at for e in history if e.kind == "claimed"][1:]
    for event, claimed in zip(retried, claimed_at, strict=True):
        run_after = datetime.fromisoformat(event.payload["run_after"])
        assert abs(run_after - event.at - timedelta(seconds=0.5)) < timedelta(seconds=0.1)
        assert claimed >= run_after
    assert Job.objects.filter(pk__in=[j.pk for j in fine], state="COMPLETE").count() == 20
    assert "event=worker_lost" in err and "outcome=failed" in err
    assert verify_projection().ok


def test_shutdown_grace__bounds_the_wait_for_a_running_task(runs_file):
    job = Job.objects.create(name="counted_once", workspace={"sleep": 30})
    worker = start_worker(DBQ_SHUTDOWN_GRACE="1", DBQ_LEASE_SECONDS="2")
    wait_for(lambda: runs_of(job.id))

    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code, _, err = finish(worker)

    assert code == 1 and time.monotonic() - started < 4, err[-2000:]
    assert "event=shutdown_grace_expired" in err
    assert kinds(job.id) == ["created", "claimed", "stopping"]
    # Stopped, not lost to its task: back without an attempt once the lease runs out.
    time.sleep(2.1)
    assert expire_leases("reaper") == [(job.id, "lease_expired")]
    assert Job.objects.get(pk=job.pk).attempts == 0
