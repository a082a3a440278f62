"""dbq_save_failed_v1 (the worker role) after a failure's hooks: only the worker that failed
the job, only while nothing else happened to it, only within its lease, only a save's
fields."""

from __future__ import annotations

import time

import pytest
from psycopg.types.json import Jsonb

from django_dbq.events.claims import new_worker_key
from tests import scratch_roles as rv

FAILED = {"error": {"type": "ValueError", "message": "m", "traceback": ""}}


@pytest.fixture(scope="module")
def owned():
    db = rv.create("savefailed")
    yield db
    rv.drop(db)


@pytest.fixture
def conns(owned):
    with (
        owned.connect("app") as app,
        owned.connect("worker") as worker,
        owned.connect("owner") as owner,
    ):
        yield app, worker, owner


def claim(worker, key, queue, lease=30.0):
    return [
        r[0]
        for r in worker.execute(
            "SELECT id FROM dbq_claim_jobs_v3(%s, 10, 'w', %s, 'h', 1, %s)", [queue, key, lease]
        )
    ]


def fail(worker, key, job):
    assert worker.execute(
        "SELECT * FROM dbq_record_outcomes_v1(%s, %s)",
        [key, Jsonb([{"job_id": str(job), "kind": "failed", "payload": FAILED}])],
    ).fetchall()


def save_failed(worker, key, job, **fields):
    return worker.execute(
        "SELECT * FROM dbq_save_failed_v1(%s, %s)",
        [key, Jsonb([{"job_id": str(job), "payload": fields}])],
    ).fetchall()


def test_held__only_fields_of_a_save_and_only_for_the_last_claimer(conns):
    app, worker, owner = conns
    a, b = new_worker_key(), new_worker_key()
    job = rv.create_job(app, queue="sf_held")
    assert claim(worker, a, "sf_held") == [job]
    fail(worker, a, job)
    for fields in (
        {"state": "READY"},
        {"attempts": 0},
        {"lease_until": "2100-01-01T00:00:00+00:00"},
        {"claimed_by": "x"},
        {"lease_key": "x"},
    ):
        with pytest.raises(Exception, match="django_dbq"):
            save_failed(worker, a, job, **fields)
    assert save_failed(worker, b, job, name="x") == []
    app.execute("SELECT * FROM dbq_requeue_jobs_v2(%s, 'op')", [[job]])
    assert claim(worker, b, "sf_held") == [job]
    fail(worker, b, job)
    assert save_failed(worker, a, job, name="x") == []
    with pytest.raises(Exception, match="permission denied"):
        app.execute("SELECT * FROM dbq_save_failed_v1(%s, '[]')", [a])


def test_a__no_save_once_the_claims_lease_is_over(conns):
    app, worker, owner = conns
    key = new_worker_key()
    job = rv.create_job(app, queue="sf_late")
    assert claim(worker, key, "sf_late", lease=1.0) == [job]
    fail(worker, key, job)
    time.sleep(1.5)  # ... or a week
    saved = save_failed(
        worker,
        key,
        job,
        name="other",
        next_task="tests.jobs.task_two",
        created="2000-01-01T00:00:00+00:00",
    )
    assert saved == [], owner.execute(
        "SELECT name, next_task, created FROM django_dbq_job WHERE id = %s", [job]
    ).fetchone()


def test_b__no_save_after_a_requeue_even_if_the_app_set_it_failed_again(conns):
    app, worker, owner = conns
    key = new_worker_key()
    job = rv.create_job(app, queue="sf_requeued")
    assert claim(worker, key, "sf_requeued") == [job]
    fail(worker, key, job)
    app.execute("SELECT * FROM dbq_requeue_jobs_v2(%s, 'op')", [[job]])
    rv.save(app, job, state="FAILED", workspace={"operator": "note"})
    assert save_failed(worker, key, job, workspace={"stale": True}) == []


def test_c__no_save_of_a_job_that_lease_expiry_failed(conns):
    app, worker, owner = conns
    key = new_worker_key()
    job = rv.create_job(app, queue="sf_lost")
    rules = Jsonb({"testjob": {"limit": 1, "delays": [0], "jitter": False}})
    for _ in range(2):  # lost twice: retried, then failed (WorkerLost)
        assert claim(worker, key, "sf_lost", lease=1.0) == [job]
        time.sleep(1.2)
        worker.execute("SELECT * FROM dbq_expire_leases_v3('noticer', 500, %s)", [rules]).fetchall()
    assert owner.execute("SELECT state FROM django_dbq_job WHERE id = %s", [job]).fetchone() == (
        "FAILED",
    )
    assert save_failed(worker, key, job, name="renamed") == []
