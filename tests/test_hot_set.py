"""A hot set that stays small (migration 0019): claims and idle polls read only the jobs
they may take, whatever the number of jobs scheduled for later or finished.

Claim order stays django-db-queue's (priority, then creation time) for every job
due, scheduled ones included.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from django_dbq.events.claims import claim_jobs, seconds_until_due
from django_dbq.models import Job
from django_dbq.sqlfiles import load_queries
from tests import scratch_roles as rv
from tests.test_migration_0011 import functions, migrate, public
from tests.test_schema import CLAIM_PARAMS, claim_statement

KEY = "k" * 40


def claim(limit: int, queue: str = "default", names=None) -> list[str]:
    return [str(row[0]) for row in claim_jobs(queue, limit, "w", KEY, "h", 1, 30, names=names)]


def plan_nodes(plan: dict) -> list[dict]:
    nodes, todo = [], [plan]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo.extend(node.get("Plans", []))
    return nodes


def explain(statement: str, params: dict) -> list[dict]:
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE django_dbq_job")
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params)
        (plan,) = cursor.fetchone()
    if isinstance(plan, str):
        plan = json.loads(plan)
    return plan_nodes(plan[0]["Plan"])


def schedule(count: int, when, queue: str = "default", **fields) -> list[Job]:
    return Job.objects.bulk_create(
        [Job(name="testjob", queue_name=queue, run_after=when, **fields) for _ in range(count)]
    )


def age(job: Job, created, run_after) -> None:
    """A job created at `created`, scheduled for `run_after` (an `updated` event)."""
    job.created, job.run_after = created, run_after
    job.save()


@pytest.mark.django_db(transaction=True)
def test_claim__reads_none_of_the_jobs_scheduled_for_later():
    tomorrow = timezone.now() + timedelta(days=1)
    schedule(3000, tomorrow)
    Job.objects.bulk_create([Job(name="testjob", state="COMPLETE") for _ in range(2000)])
    Job.objects.bulk_create([Job(name="testjob") for _ in range(20)])

    nodes = explain(claim_statement(), CLAIM_PARAMS)

    scans = {n.get("Index Name") for n in nodes if n["Node Type"].startswith("Index")}
    assert {"django_dbq_job_ready", "django_dbq_job_scheduled"} <= scans, scans
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes
    # Before 0019 the claim stepped over the 3,000 scheduled jobs ahead of the ready ones.
    read = sum(
        n.get("Actual Rows", 0) + n.get("Rows Removed by Filter", 0)
        for n in nodes
        if n.get("Relation Name") == "django_dbq_job"
    )
    assert read <= 20, nodes


@pytest.mark.django_db(transaction=True)
def test_idle_poll__reads_the_next_scheduled_job_only():
    now = timezone.now()
    schedule(3000, now + timedelta(days=1))
    schedule(1, now + timedelta(hours=1))

    statement = load_queries("django_dbq.events", "claims.sql")["jobs_seconds_until_due"]
    nodes = explain(statement, {"queue_name": "default"})

    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes
    scans = [n for n in nodes if n.get("Index Name") == "django_dbq_job_scheduled"]
    assert scans and all(n["Actual Rows"] <= 1 for n in scans), nodes
    assert 3500 < seconds_until_due("default") <= 3600


@pytest.mark.django_db(transaction=True)
def test_claim__due_scheduled_jobs_take_their_place_in_claim_order():
    now = timezone.now()
    old_scheduled, urgent_scheduled, later = schedule(3, now + timedelta(hours=1))
    ready_old, ready_new = Job.objects.create(name="testjob"), Job.objects.create(name="testjob")
    # Created before the ready jobs, due an hour ago: first by creation time.
    age(old_scheduled, now - timedelta(hours=3), now - timedelta(hours=1))
    age(ready_old, now - timedelta(hours=2), None)
    # Higher priority, due now: ahead of all.
    urgent_scheduled.priority = 5
    age(urgent_scheduled, now - timedelta(minutes=1), now - timedelta(seconds=1))

    assert claim(10) == [
        str(urgent_scheduled.pk),
        str(old_scheduled.pk),
        str(ready_old.pk),
        str(ready_new.pk),
    ]
    assert Job.objects.get(pk=later.pk).state == Job.STATES.NEW  # not due yet
    assert claim(10) == []


@pytest.mark.django_db(transaction=True)
def test_claim__more_due_scheduled_jobs_than_a_batch_still_come_in_claim_order():
    now = timezone.now()
    jobs = schedule(4, now + timedelta(hours=1))
    # Due 4, 3, 2 and 1 minutes ago; created in the other order.
    for n, job in enumerate(jobs):
        age(job, now - timedelta(hours=2, minutes=n), now - timedelta(minutes=4 - n))
    ready = Job.objects.create(name="testjob")

    # Batches of 2, by creation time whenever they came due.
    assert claim(2) == [str(jobs[3].pk), str(jobs[2].pk)]
    assert claim(2) == [str(jobs[1].pk), str(jobs[0].pk)]
    assert claim(2) == [str(ready.pk)]


@pytest.mark.django_db(transaction=True)
def test_claim__a_job_whose_created_a_save_moved_past_its_run_after_waits_for_it():
    job = Job.objects.create(name="testjob")
    age(job, timezone.now() + timedelta(days=2), timezone.now() + timedelta(days=1))

    assert claim(10) == []
    age(job, timezone.now() + timedelta(days=2), timezone.now() - timedelta(seconds=1))
    assert claim(10) == [str(job.pk)]


@pytest.mark.django_db(transaction=True)
def test_queue_depths__count_scheduled_and_ready_jobs():
    schedule(3, timezone.now() + timedelta(days=1))
    Job.objects.create(name="testjob")

    assert Job.get_queue_depths() == {"default": 4}
    assert Job.get_queue_depths(exclude_future_jobs=True) == {"default": 1}


@pytest.mark.django_db
def test_storage__the_hot_tables_vacuum_early_and_keep_room_for_updates():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, reloptions FROM pg_class"
            " WHERE relname IN ('django_dbq_job', 'django_dbq_jobevent') ORDER BY 1"
        )
        options = {name: dict(o.split("=") for o in opts) for name, opts in cursor.fetchall()}

    assert options["django_dbq_job"]["fillfactor"] == "80"
    assert options["django_dbq_job"]["autovacuum_vacuum_scale_factor"] == "0.02"
    assert options["django_dbq_jobevent"]["autovacuum_vacuum_insert_scale_factor"] == "0.02"


@pytest.fixture
def at_0018():
    db = rv.create("m19")  # with the roles' grants
    migrate(db, "django_dbq", "0018_hash_old_events")
    yield db
    rv.drop(db)


INDEXES = (
    "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
    " WHERE i.indrelid = 'django_dbq_job'::regclass AND c.relname LIKE 'django_dbq_job_%%'"
    " ORDER BY 1"
)


def test_0019__builds_the_indexes_again_after_a_failed_build_and_goes_back(at_0018):
    before = functions(at_0018)
    with at_0018.connect("app") as app:
        rv.create_job(app)
        rv.create_job(app)
    with at_0018.connect("owner") as owner:
        # What a CREATE INDEX CONCURRENTLY that failed half way leaves: an invalid index.
        owner.autocommit = True
        with pytest.raises(Exception, match="could not create unique index"):
            owner.execute(
                "CREATE UNIQUE INDEX CONCURRENTLY django_dbq_job_ready ON django_dbq_job (queue_name)"
            )
        assert ("django_dbq_job_ready", False) in owner.execute(INDEXES).fetchall()

    migrate(at_0018)
    with at_0018.connect("owner") as owner:
        names = owner.execute(INDEXES).fetchall()
        assert ("django_dbq_job_ready", True) in names
        assert ("django_dbq_job_scheduled", True) in names
        assert "django_dbq_job_claimable" not in [n for n, _ in names]
        assert (
            "run_after > created"
            in owner.execute("SELECT pg_get_indexdef('django_dbq_job_ready'::regclass)").fetchone()[
                0
            ]
        )
    with at_0018.connect("worker") as worker:
        rows = worker.execute(
            "SELECT id FROM dbq_claim_jobs_v4('default', 5, 'w', %s, 'h', 1, 30)", [KEY]
        ).fetchall()
        assert len(rows) == 2

    migrate(at_0018, "django_dbq", "0018_hash_old_events")
    assert functions(at_0018) == before
    assert public(at_0018) == []
    with at_0018.connect("owner") as owner:
        names = [n for n, valid in owner.execute(INDEXES).fetchall() if valid]
        assert "django_dbq_job_claimable" in names
        assert "django_dbq_job_ready" not in names
        assert owner.execute(
            "SELECT reloptions FROM pg_class WHERE relname = 'django_dbq_job'"
        ).fetchone() == (None,)
    migrate(at_0018)
    assert public(at_0018) == []
