"""Many jobs without a key (imported, or created PROCESSING by the app role) keep lease
expiry bounded: a lost worker's jobs still come back, and a live worker keeps its lease."""

from __future__ import annotations

import subprocess
import time

import psycopg
import pytest

from django_dbq.events.claims import new_worker_key
from tests import scratch_roles as rv


@pytest.fixture(scope="module")
def owned():
    db = rv.create("flood")
    # The app role's flood: jobs created PROCESSING hold no lease and no key.
    with db.connect("app") as app:
        rv.create_jobs(app, 150_000, queue="flood")
    yield db
    rv.drop(db)


def test_a_flood_of_keyless_processing_jobs_does_not_stop_a_lost_workers_jobs_coming_back(owned):
    with owned.connect("app") as app:
        lost = [rv.create_job(app, queue="q1") for _ in range(3)]
    with owned.connect("worker") as worker:
        key = new_worker_key()
        claimed = worker.execute(
            "SELECT id FROM dbq_claim_jobs_v3('q1', 10, 'lost', %s, 'h', 1, 1.0)", [key]
        ).fetchall()
        assert len(claimed) == 3
        time.sleep(1.2)  # the lost worker's lease runs out
        # A bound on the worker role's statements (README: bound audit reads with it).
        worker.execute("SET statement_timeout = '1s'")
        errors = []
        for _ in range(3):  # three heartbeats
            try:
                worker.execute(
                    "SELECT * FROM dbq_expire_leases_v4('noticer', 500, '{}')"
                ).fetchall()
            except psycopg.errors.QueryCanceled as exc:
                errors.append(exc)
        states = worker.execute(
            "SELECT state FROM django_dbq_job WHERE id = ANY(%s)", [lost]
        ).fetchall()
    assert not errors, f"{len(errors)} of 3 expiry calls cancelled by the keyless flood"
    assert {s for (s,) in states} == {"READY"}


def test_a_flood_of_keyless_processing_jobs_does_not_make_a_live_worker_lose_its_running_job(
    owned, tmp_path
):
    runs = tmp_path / "runs.txt"
    runs.touch()
    with owned.connect("app") as app:
        # Its task sleeps 60 s on its first run, not after (tests.jobs.sleep_on_first_run).
        job = rv.create_job(app, name="killed_once", next_task="tests.jobs.sleep_on_first_run")
    env = {"DBQ_TEST_RUNS": str(runs)}
    options = dict(
        settings="tests.settings_short_lease",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    victim = rv.worker_process(owned, "default", **options)
    second = None
    try:
        deadline = time.monotonic() + 30
        while not runs.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert runs.read_text(), "the victim never started the job"
        time.sleep(1.0)
        second = rv.worker_process(owned, "default", "--max-jobs", "1", **options)
        # A stalled heartbeat loses the 3 s lease well within this.
        deadline = time.monotonic() + 8
        while len(runs.read_text().splitlines()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        victim_alive = victim.poll() is None
        lines = runs.read_text().splitlines()
        with owned.connect("owner") as owner:
            kinds = [
                k
                for (k,) in owner.execute(
                    "SELECT kind FROM django_dbq_jobevent WHERE job_id = %s ORDER BY version", [job]
                )
            ]
    finally:
        for process in (victim, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert victim_alive
    assert len(lines) == 1, f"job ran {len(lines)} times at once; events: {kinds}"
