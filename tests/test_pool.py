"""Django's connection pool (OPTIONS={"pool": ...}): worker processes and the application under it.

The child processes run with DBQ_TEST_POOL=1, which turns the pool on in
tests/settings.py; tests/pooled.py holds the scenarios the application side runs.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
from django.db import connection

from django_dbq.models import Job
from django_dbq.projections.replay import verify_projection
from tests.jobs import runs_of
from tests.test_worker_processes import (  # noqa: F401 (the fixture stops leftover workers)
    ROOT,
    database_url_of_this_test,
    finish,
    kinds,
    start_worker,
    stop_leftover_workers,
    terminate_other_backends,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True)
POOL = {"DBQ_TEST_POOL": "1"}


def run_scenario(name, url=None, **env):
    """Run a scenario of tests/pooled.py in a child process against this test's database (or url)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.pooled", name],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url or database_url_of_this_test(), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def worker_waits_on_listen():
    """A session of the test database is idle after LISTEN django_dbq (the worker waits)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state = 'idle' AND query = 'LISTEN django_dbq'"
        )
        return cursor.fetchone()[0] > 0


def test_pool__an_idle_worker_wakes_on_notify_and_its_heartbeat_renews_leases(runs_file):
    # Polls every 30 s: a job done within seconds was woken by the notification.
    worker = start_worker("--max-jobs", "2", DBQ_POLL_SECONDS="30", DBQ_LEASE_SECONDS="1.5", **POOL)
    wait_for(worker_waits_on_listen)
    enqueued = time.monotonic()
    saving = Job.objects.create(name="saves")
    wait_for(lambda: Job.objects.get(pk=saving.pk).state == Job.STATES.COMPLETE, timeout=10)
    woke_in = time.monotonic() - enqueued
    long = Job.objects.create(name="counted_once", workspace={"sleep": 3})
    code, _, err = finish(worker, timeout=15)

    assert code == 0 and "database_error" not in err, err[-2000:]
    assert woke_in < 5, woke_in
    assert Job.objects.get(pk=saving.pk).workspace["progress"] == 50
    history = kinds(long.id)
    assert history.count("lease_renewed") >= 2 and "lease_expired" not in history, history
    assert verify_projection().ok


def test_pool__a_killed_workers_job_is_finished_by_another_after_the_lease(runs_file):
    job = Job.objects.create(name="killed_once")
    first = start_worker(DBQ_LEASE_SECONDS="2", **POOL)
    wait_for(lambda: runs_of(job.id))
    os.kill(first.pid, signal.SIGKILL)
    first.wait()

    code, _, err = finish(start_worker("--max-jobs", "1", DBQ_LEASE_SECONDS="2", **POOL))

    assert code == 0, err[-2000:]
    assert kinds(job.id) == ["created", "claimed", "retried", "claimed", "completed"]


def test_pool__workers_recover_from_cut_connections_and_run_each_task_once(runs_file):
    jobs = Job.objects.bulk_create(
        [Job(name="counted_once", workspace={"sleep": 0.01}) for _ in range(400)]
    )
    workers = [
        start_worker("--burst", **POOL),
        start_worker("--burst", "--concurrency", "2", **POOL),
    ]
    # Three cuts once the workers run (they may be slow to start on a busy machine).
    killed, cuts, deadline = 0, 0, time.monotonic() + 60
    while cuts < 3 and time.monotonic() < deadline:
        time.sleep(0.3)
        if cuts or Job.objects.exclude(state=Job.STATES.NEW).exists():
            killed += terminate_other_backends()
            cuts += 1

    results = [finish(worker) for worker in workers]

    assert killed > 0
    assert [code for code, _, _ in results] == [0, 0], results[0][2][-2000:]
    assert Job.objects.filter(state=Job.STATES.COMPLETE).count() == len(jobs)
    runs = [line.split()[0] for line in runs_file.read_text().splitlines()]
    assert len(runs) == len(set(runs)) == len(jobs)
    assert verify_projection().ok


def test_pool__enqueue_save_operations_time_travel_and_maintenance_work():
    run_scenario("application", **POOL)

    assert verify_projection().ok


def test_pool__a_connection_closed_mid_transaction_comes_back_rolled_back():
    run_scenario("rolled_back", **POOL)


def test_pool__no_pooled_session_keeps_the_workers_key(runs_file):
    run_scenario(
        "no_key_in_sessions", **POOL, DBQ_TEST_PREPARE_THRESHOLD="1", DBQ_POLL_SECONDS="0.2"
    )


def test_pool__a_worker_hands_its_connection_back_without_its_listen(runs_file):
    run_scenario("no_listen_in_sessions", **POOL, DBQ_POLL_SECONDS="0.2")
