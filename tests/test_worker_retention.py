"""Retention by the workers on a schedule (DBQ_RETENTION_HOURS), without cron."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from django_dbq.models import Job
from django_dbq.worker.loop import Worker
from tests import scratch_roles as rv

pytestmark = pytest.mark.django_db(transaction=True)


def finished(count, days_old):
    jobs = Job.objects.bulk_create([Job(name="testjob", state="COMPLETE") for _ in range(count)])
    for job in jobs:
        job.created = timezone.now() - timedelta(days=days_old)
        job.save()
    return jobs


@override_settings(DBQ_RETENTION_HOURS=24, DBQ_RETENTION_SECONDS=3600, DBQ_RETENTION_BATCH=2)
def test_worker__runs_retention_in_the_background_when_due(caplog):
    finished(5, days_old=3)
    recent = finished(1, days_old=0)
    waiting = Job.objects.create(name="testjob")
    worker = Worker(burst=True, handle_signals=False)
    worker._next_retention_at = time.time()  # due now; normally within the hour

    with caplog.at_level(logging.INFO, logger="django_dbq.worker"):
        worker.process_batch()  # starts the run, claims and runs the waiting job
        worker._retention_thread.join(30)
        worker.process_batch()  # records its outcome

    assert set(Job.objects.values_list("pk", flat=True)) == {recent[0].pk, waiting.pk}
    assert Job.objects.get(pk=waiting.pk).state == "COMPLETE"  # run meanwhile
    assert any(
        "event=retention " in r.getMessage() and "deleted=5" in r.getMessage()
        for r in caplog.records
    )
    # The next run within the interval, not before.
    assert worker._next_retention_at > time.time() + 1000


@override_settings(DBQ_RETENTION_HOURS=24, DBQ_RETENTION_BATCH=2)
def test_worker__that_stops_ends_its_retention_run_after_the_batch(caplog):
    finished(5, days_old=3)
    worker = Worker(burst=True, handle_signals=False)
    worker.alive = False  # SIGTERM, or the end of a burst

    with caplog.at_level(logging.INFO, logger="django_dbq.worker"):
        worker._run_retention()

    assert Job.objects.count() == 3
    assert any("event=retention_stopped" in r.getMessage() for r in caplog.records)


@override_settings(DBQ_RETENTION_HOURS=None)
def test_worker__without_the_setting_deletes_nothing():
    finished(2, days_old=30)
    worker = Worker(burst=True, handle_signals=False)
    worker.run()

    assert worker._retention_thread is None
    assert Job.objects.count() == 2


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("DBQ_RETENTION_HOURS", "a week", "E019"),
        ("DBQ_RETENTION_SECONDS", 0, "E020"),
        ("DBQ_RETENTION_BATCH", -5, "E021"),
    ],
)
def test_checks__refuse_retention_settings_that_are_not_numbers(name, value, code):
    from django.core.management.base import SystemCheckError

    with override_settings(**{name: value}), pytest.raises(SystemCheckError, match=code):
        call_command("check")


@pytest.fixture
def roles():
    db = rv.create("wret")
    yield db
    rv.drop(db)


def retaining_worker(roles):
    """A worker process as the worker role that runs retention at every turn (jobs
    older than 0.36 s)."""
    return rv.worker_process(
        roles,
        env={
            "DBQ_TEST_RETENTION_HOURS": "0.0001",
            "DBQ_TEST_RETENTION_SECONDS": "0.001",
            "DBQ_POLL_SECONDS": "0.1",
        },
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


def test_worker_role__is_told_once_that_it_may_not_run_retention_and_goes_on(roles):
    with roles.connect("app") as app:
        rv.create_job(app, state="COMPLETE")
        job = rv.create_job(app)
    process = retaining_worker(roles)
    time.sleep(4)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)

    assert process.returncode == 0, err[-2000:]
    with roles.connect("owner") as owner:
        states = dict(owner.execute("SELECT id, state FROM django_dbq_job").fetchall())
    assert states[job] == "COMPLETE" and len(states) == 2  # ran its job, deleted nothing
    # Told once (warnings reach stderr), not at every due time since.
    warned = [line for line in err.decode().splitlines() if "event=retention_error" in line]
    assert len(warned) == 1, err.decode()[-3000:]
    assert "permission denied" in warned[0] and "ledger_grants --maintenance" in warned[0]


def test_worker_role_with_the_maintenance_grants__runs_retention(roles):
    # What the README says to do for retention by the workers.
    granted = roles.manage(
        "owner", "ledger_grants", "--execute", "--maintenance", roles.roles["worker"]
    )
    assert granted.returncode == 0, granted.stderr[-2000:]
    with roles.connect("app") as app:
        old = rv.create_job(app, state="COMPLETE")
        waiting = rv.create_job(app, queue="elsewhere")
    time.sleep(0.5)  # older than the 0.0001 hours below
    process = retaining_worker(roles)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with roles.connect("owner") as owner:
            ids = [row[0] for row in owner.execute("SELECT id FROM django_dbq_job").fetchall()]
        if old not in ids:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)

    assert process.returncode == 0, err[-2000:]
    assert old not in ids, "the worker deleted no old job"
    assert waiting in ids  # not finished: kept
    assert b"event=retention_error" not in err
