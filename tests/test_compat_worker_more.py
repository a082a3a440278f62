"""django-db-queue 3.3's Worker step (process_job, _process_job) under signals, long tasks,
transactions and repeated calls."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from django.db import transaction

from django_dbq.management.commands.worker import Worker
from django_dbq.models import Job
from tests import jobs as test_jobs

pytestmark = pytest.mark.django_db(transaction=True)


def slow(job):
    time.sleep(job.workspace.get("sleep", 0))
    job.workspace["slept"] = True


def fails(job):
    raise RuntimeError("uh oh")


@pytest.fixture(autouse=True)
def setup(settings):
    settings.JOBS = {
        **settings.JOBS,
        "slow": ["tests.test_compat_worker_more.slow"],
        "fails_hooked": {
            "tasks": ["tests.test_compat_worker_more.fails"],
            "failure_hook": "tests.jobs.output_failure_hook",
        },
        "signals": ["tests.jobs.signals_its_process"],
    }
    names = ("SIGINT", "SIGTERM", "SIGQUIT")
    saved = {n: signal.getsignal(getattr(signal, n)) for n in names}
    test_jobs.WORKERS.clear()
    yield
    for n, handler in saved.items():
        signal.signal(getattr(signal, n), handler)


def kinds(job):
    return list(job.events.values_list("kind", flat=True))


def heartbeats():
    return [t for t in threading.enumerate() if t.name == "dbq-heartbeat"]


def test_repeated_process_job_calls_leave_no_heartbeat_thread():
    worker = Worker("default", 0)
    for _ in range(20):
        Job.objects.create(name="testjob")
    for _ in range(25):  # five with nothing ready
        worker._process_job()
    time.sleep(0.2)
    assert heartbeats() == []
    assert set(Job.objects.values_list("state", flat=True)) == {"COMPLETE"}


def test_failure_hook_changes_are_recorded_inside_a_transaction():
    with transaction.atomic():
        job = Job.objects.create(name="fails_hooked")
        Worker("default", 1)._process_job()
        stored = Job.objects.get(pk=job.pk)
        assert stored.state == "FAILED"
        assert stored.workspace["output"] == "failure hook ran"
        assert "uh oh" in stored.workspace["exception"]
        assert kinds(job) == ["created", "claimed", "failed", "updated"]


def test_sigterm_in_a_task_inside_atomic_records_stopping_once_before_the_outcome():
    with transaction.atomic():
        job = Job.objects.create(name="signals")
        worker = Worker("default", 1)
        worker._process_job()
        assert kinds(job) == ["created", "claimed", "stopping", "completed"]
        assert not worker.alive


def test_a_task_three_leases_long_keeps_its_lease(settings):
    settings.DBQ_LEASE_SECONDS = 0.6
    job = Job.objects.create(name="slow", workspace={"sleep": 1.8})
    Worker("default", 0)._process_job()
    events = kinds(job)
    assert events[-1] == "completed" and "lease_renewed" in events
    assert "lease_expired" not in events and "retried" not in events


def test_run_after_process_job_drains_and_stops():
    worker = Worker("default", 0, burst=True)
    Job.objects.create(name="testjob")
    worker._process_job()
    for _ in range(5):
        Job.objects.create(name="testjob")
    worker.run()
    assert set(Job.objects.values_list("state", flat=True)) == {"COMPLETE"}
    assert heartbeats() == []
