"""A lost worker's job counts an attempt: the database's side (dbq_expire_leases_v4)."""

import os
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from django_dbq.events.claims import append_held, claim_jobs, expire_leases, new_worker_key
from django_dbq.models import Job
from django_dbq.projections.replay import verify_projection
from django_dbq.worker import Worker
from tests import jobs as test_jobs

pytestmark = pytest.mark.django_db(transaction=True)

KEY = new_worker_key()
AT_ONCE = {"testjob": {"limit": 1, "delays": [0]}}


def lose(limit=1, queue="default", key=KEY):
    """Claim as a worker whose lease runs out in a second, and let it run out."""
    rows = claim_jobs(queue, limit, "lost-worker", key, "h", 1, 1)
    time.sleep(1.05)
    return [row[0] for row in rows]


def kinds(job):
    return list(job.events.values_list("kind", flat=True))


def test_lost_worker__the_job_it_ran_is_retried_with_worker_lost_after_its_backoff():
    job = Job.objects.create(name="kills_its_worker")  # retries 2, constant 0.5 s
    lose()

    before = timezone.now()
    assert expire_leases("reaper") == [(job.id, "retried")]

    job.refresh_from_db()
    assert kinds(job) == ["created", "claimed", "retried"]
    assert (job.state, job.attempts, job.claimed_by) == (Job.STATES.READY, 1, None)
    assert before + timedelta(seconds=0.4) < job.run_after < before + timedelta(seconds=2)
    retried = job.events.get(kind="retried")
    assert retried.payload["error"]["type"] == "django_dbq.exceptions.WorkerLost"
    assert "lost-worker" in retried.payload["error"]["message"]
    assert (retried.payload["attempt"], retried.payload["noticed_by"]) == (1, "reaper")
    assert verify_projection().ok


def test_lost_worker__a_job_without_retries_runs_once_more_then_fails_with_worker_lost():
    job = Job.objects.create(name="testjob")
    lose()
    expire_leases("reaper", rules=AT_ONCE)
    lose()

    expire_leases("reaper", rules=AT_ONCE)

    job.refresh_from_db()
    assert kinds(job) == ["created", "claimed", "retried", "claimed", "failed"]
    assert (job.state, job.attempts) == (Job.STATES.FAILED, 2)
    error = job.events.get(kind="failed").payload["error"]
    assert error["type"] == "django_dbq.exceptions.WorkerLost"
    assert "attempt 2 of 2" in error["message"]
    assert verify_projection().ok


def test_lost_worker__the_default_rules_come_from_settings_jobs_retries():
    job = Job.objects.create(name="flaky")  # retries 2, constant 0 s
    for _ in range(3):
        lose()
        expire_leases("reaper")

    assert kinds(job)[-1] == "failed" and kinds(job).count("retried") == 2


def test_lost_worker__only_the_job_it_was_running_counts_an_attempt_not_the_rest_of_its_batch():
    jobs = Job.objects.bulk_create([Job(name="testjob") for _ in range(4)])
    claimed = claim_jobs("default", 4, "lost-worker", KEY, "h", 1, 1)
    order = [row[0] for row in claimed]
    # It finished the first job of the batch, and died in the second.
    assert append_held(KEY, [(order[0], "completed", "{}")]) == {order[0]}
    time.sleep(1.05)

    expired = dict(expire_leases("reaper", rules=AT_ONCE))
    assert expired == {order[1]: "retried", order[2]: "lease_expired", order[3]: "lease_expired"}

    by_id = {job.pk: job for job in Job.objects.filter(pk__in=[j.pk for j in jobs])}
    positions = [by_id[i].events.get(kind="claimed").payload["position"] for i in order]
    assert positions == [1, 2, 3, 4]
    assert kinds(by_id[order[1]])[-1] == "retried" and by_id[order[1]].attempts == 1
    for unstarted in order[2:]:
        assert kinds(by_id[unstarted])[-1] == "lease_expired"
        assert by_id[unstarted].attempts == 0
    assert verify_projection().ok


def test_lost_worker__each_lost_worker_has_its_own_running_job():
    first, second = Job.objects.bulk_create([Job(name="testjob") for _ in range(2)])
    claim_jobs("default", 1, "lost-a", KEY, "h", 1, 1)
    claim_jobs("default", 1, "lost-b", new_worker_key(), "h", 2, 1)
    time.sleep(1.05)

    expire_leases("reaper", rules=AT_ONCE)

    assert kinds(first)[-1] == kinds(second)[-1] == "retried"


def test_lost_worker__a_job_stopping_when_it_was_lost_goes_back_without_an_attempt():
    job = Job.objects.create(name="testjob")
    lose_in = claim_jobs("default", 1, "stopped-worker", KEY, "h", 1, 1)
    append_held(KEY, [(lose_in[0][0], "stopping", "{}")])
    time.sleep(1.05)

    expire_leases("reaper", rules=AT_ONCE)

    job.refresh_from_db()
    assert kinds(job)[-1] == "lease_expired"
    assert (job.state, job.attempts) == (Job.STATES.READY, 0)


def test_lost_worker__a_job_imported_as_processing_goes_back_without_an_attempt():
    # As a django-db-queue database brings a running job: PROCESSING, no lease, no key.
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)"
            " VALUES (gen_random_uuid(), 1, 'created',"
            ' \'{"name": "testjob", "state": "PROCESSING"}\') RETURNING job_id'
        )
        (job_id,) = cursor.fetchone()

    assert expire_leases("reaper", rules=AT_ONCE) == [(job_id, "lease_expired")]

    job = Job.objects.get(pk=job_id)
    assert kinds(job)[-1] == "lease_expired" and job.attempts == 0


def test_lost_worker__a_job_that_came_back_runs_only_after_its_batch_before_it_is_recorded():
    later = timezone.now() + timedelta(hours=1)
    neighbour = Job.objects.create(name="testjob", priority=5, run_after=later)
    back = Job.objects.create(name="notes_neighbour", workspace={"neighbour": str(neighbour.pk)})
    # `back` was lost once with its worker, and is READY again; then the
    # neighbour, ahead of it in claim order, comes due.
    lose()
    expire_leases("reaper", rules={"notes_neighbour": {"limit": 1, "delays": [0]}})
    neighbour.run_after = None
    neighbour.save()
    test_jobs.CALLS.clear()

    worker = Worker("default", burst=True, handle_signals=False)
    worker._batch_size = 2
    worker.run()

    # Claimed together, the neighbour first: its outcome was recorded before
    # `back` started, so a crash in `back` is charged to `back`.
    assert kinds(back)[-3:] == ["retried", "claimed", "completed"]
    assert test_jobs.CALLS == [("neighbour", Job.STATES.COMPLETE)]
    first, second = (
        j.events.filter(kind="claimed").last().payload["position"] for j in (neighbour, back)
    )
    assert (first, second) == (1, 2)


def test_lost_worker__a_previous_release_workers_batch_goes_back_without_attempts():
    jobs = Job.objects.bulk_create([Job(name="testjob") for _ in range(3)])
    with connection.cursor() as cursor:
        # The claim of a worker of the release before (no position in its events).
        cursor.execute(
            "SELECT id FROM dbq_claim_jobs_v2('default', 3, 'old-worker', %s, 'h', 1, 1)", [KEY]
        )
    time.sleep(1.05)

    expired = dict(expire_leases("reaper", rules=AT_ONCE))

    assert expired == {job.pk: "lease_expired" for job in jobs}
    assert set(Job.objects.values_list("attempts", flat=True)) == {0}


def test_lost_worker__a_lost_batch_is_judged_whole_whatever_the_limit():
    Job.objects.bulk_create([Job(name="testjob") for _ in range(6)])
    lose(limit=6)

    # The limit counts lost workers: their whole batches are given back together.
    first = expire_leases("reaper", limit=1, rules=AT_ONCE)
    again = expire_leases("reaper", limit=1, rules=AT_ONCE)

    assert sorted(kind for _, kind in first) == ["lease_expired"] * 5 + ["retried"]
    assert again == []


@pytest.mark.parametrize(
    "config",
    [
        {"retries": 1025},
        {"retries": 2_000_000, "retry_backoff": "constant"},
        {"retries": 2, "retry_backoff": "constant", "retry_delay": float("inf")},
        {"retries": "many"},
        {"retries": 3, "retry_backoff": "tests.jobs.no_such_backoff"},
    ],
)
def test_lost_worker__any_retry_setting_gives_rules_the_database_takes(settings, config):
    settings.JOBS = {**settings.JOBS, "odd": {"tasks": ["tests.jobs.task_one"], **config}}
    from django_dbq.retries import LISTED_DELAYS, lost_worker_rules

    rule = lost_worker_rules()["odd"]

    assert 1 <= rule["limit"] and len(rule["delays"]) <= LISTED_DELAYS
    assert all(0 <= delay <= 86400 for delay in rule["delays"])
    job = Job.objects.create(name="odd")
    lose()
    assert expire_leases("reaper") == [(job.pk, "retried")]


def test_lost_worker__a_batch_with_a_job_locked_elsewhere_waits_without_making_expiry_wait():
    import psycopg

    from django_dbq.testing import with_database

    Job.objects.bulk_create([Job(name="testjob") for _ in range(3)])
    order = lose(limit=3)
    url = with_database(os.environ["DATABASE_URL"], connection.settings_dict["NAME"])
    with psycopg.connect(url) as other:
        # An open transaction holding the row of the batch's first job (an
        # application's save of a running job, say) until it ends.
        other.execute("SELECT 1 FROM django_dbq_job WHERE id = %s FOR UPDATE", [order[0]])
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '300ms'")
        try:
            assert expire_leases("reaper", rules=AT_ONCE) == []
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
    # Once it is free, the batch is judged whole: one attempt, for its first job.
    expired = dict(expire_leases("reaper", rules=AT_ONCE))
    assert expired == {order[0]: "retried", order[1]: "lease_expired", order[2]: "lease_expired"}
