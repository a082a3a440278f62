"""A review of the hot set claim, the counts and reads, and batched retention, as an
attacker and an operator would try them.

The tests that say "Found" failed on the first version of those changes; the others
are attacks that held.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from psycopg.types.json import Jsonb

from django_dbq.events.append import delete_old_jobs
from django_dbq.ids import uuid7
from django_dbq.models import Job
from django_dbq.projections import stats as job_stats
from tests import scratch_roles as rv
from tests.test_hot_set import age, claim

KEY = "k" * 40

pytestmark = pytest.mark.django_db(transaction=True)


def raw_conn() -> psycopg.Connection:
    params = {k: v for k, v in connection.get_connection_params().items() if k != "context"}
    return psycopg.connect(**params, autocommit=True)


# --- claim order -------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3, 10])
def test_claim__a_high_priority_due_job_is_starved_behind_earlier_due_low_priority_ones(batch):
    """Found: django-db-queue's order is priority DESC, created for every due job.

    Here a priority-10 job (say a retry with a delay) is due, but `batch` low-
    priority jobs came due earlier and a stream of priority-5 ready jobs keeps
    arriving: the `due` CTE (ORDER BY run_after LIMIT max_jobs) only ever offers
    the low ones, which lose to the priority-5 jobs, so the priority-10 job is
    never claimed while the stream lasts. A batch of 1 is the worker's first
    batch, its batch under a rate limit, and what slow jobs shrink it to
    (worker/batch.py); at 100 it takes 100 low-priority retries.
    """
    now = timezone.now()
    low = [Job.objects.create(name="testjob", priority=0) for _ in range(batch)]
    urgent = Job.objects.create(name="testjob", priority=10)
    for n, job in enumerate(low):
        age(job, now - timedelta(hours=2), now - timedelta(minutes=10 + n))  # due 10+ min ago
    age(urgent, now - timedelta(hours=1), now - timedelta(minutes=1))  # due 1 min ago

    claimed = []
    for _ in range(5):
        Job.objects.bulk_create([Job(name="testjob", priority=5) for _ in range(batch)])
        claimed.append(claim(batch))

    # In django-db-queue's order the priority-10 job is in the first batch.
    assert str(urgent.pk) in claimed[0], (
        "the due priority-10 job was passed over by every priority-5 job; "
        f"claimed in 5 batches: {any(str(urgent.pk) in c for c in claimed)}"
    )


def test_claim__fewer_due_than_a_batch_keeps_the_exact_order():
    """Held: with fewer due scheduled jobs than the batch, the order is exact."""
    now = timezone.now()
    a = Job.objects.create(name="testjob", priority=1)
    b = Job.objects.create(name="testjob", priority=3)
    age(a, now - timedelta(hours=3), now - timedelta(minutes=5))
    age(b, now - timedelta(hours=1), now - timedelta(minutes=1))
    ready = [Job.objects.create(name="testjob", priority=p) for p in (2, 0, 3)]
    # Created before every ready job but b; b and ready[2] tie on priority.
    assert claim(10) == [str(b.pk), str(ready[2].pk), str(ready[0].pk), str(a.pk), str(ready[1].pk)]


def test_claim__names_filter_and_pause_apply_to_due_scheduled_jobs():
    """Held: the names filter and a pause hold for jobs of the scheduled index."""
    from django_dbq.queues import pause_queue, resume_queue

    now = timezone.now()
    other = Job.objects.create(name="hooked")
    age(other, now - timedelta(hours=1), now - timedelta(minutes=1))
    mine = Job.objects.create(name="testjob")
    age(mine, now - timedelta(hours=1), now - timedelta(minutes=1))
    pause_queue("default", reason="review")
    assert claim(10, names=["testjob"]) == []
    resume_queue("default")
    assert claim(10, names=["testjob"]) == [str(mine.pk)]


def test_claim__concurrent_claims_with_saves_moving_jobs_between_indexes_claim_each_once():
    """Held: two claimers and a saver that moves jobs in and out of the scheduled
    index (run_after set to the past / cleared, as "run now" does): no job is
    claimed twice, and every job is claimed."""
    now = timezone.now()
    jobs = Job.objects.bulk_create([Job(name="testjob", priority=i % 3) for i in range(120)])
    for job in jobs[::2]:
        age(job, now - timedelta(hours=1), now - timedelta(minutes=1))
    ids = {str(j.pk) for j in jobs}
    got: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    sql = "SELECT id FROM dbq_claim_jobs_v4('default', %s, 'w', %s, 'h', 1, 30)"

    def claimer(size):
        try:
            with raw_conn() as conn:
                idle = 0
                while idle < 20:
                    rows = conn.execute(sql, [size, KEY]).fetchall()
                    got.extend(str(r[0]) for r in rows)
                    idle = 0 if rows else idle + 1
                    time.sleep(0.002)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def saver():
        try:
            with raw_conn() as conn:
                n = 0
                while not stop.is_set():
                    job = jobs[n % len(jobs)]
                    when = None if n % 2 else (timezone.now() - timedelta(seconds=1)).isoformat()
                    try:
                        rv.save(conn, job.pk, run_after=when)
                    except psycopg.Error:
                        pass  # the job was claimed meanwhile: a save may not touch it
                    n += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(s,)) for s in (1, 7, 3)]
    saving = threading.Thread(target=saver)
    saving.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    saving.join(30)
    got += claim(1000)

    assert not errors, errors
    assert len(got) == len(set(got)), "a job was claimed twice"
    assert set(got) == ids


# --- counts ------------------------------------------------------------------


def test_stats__a_few_failed_jobs_in_a_large_table_are_reported_as_an_exact_zero(monkeypatch):
    """Found: finished jobs of a projection larger than SAMPLE_PAGES were counted
    from a page sample; a state the sample missed is absent, not marked "~",
    so `dbq_stats` prints an exact-looking 0 FAILED (and a queue with only
    finished jobs vanishes). SAMPLE_PAGES is lowered here to keep the table small:
    at the default, a 1.6 GB projection (about 5M jobs) samples 1% of its pages,
    and a queue with a few dozen FAILED jobs is most likely shown as 0.
    (Passes only when the sample happens to hit the one page, about 1 run in 300.)
    """
    Job.objects.bulk_create(
        [Job(name="testjob", state="COMPLETE", queue_name="big") for _ in range(20000)]
    )
    rare = Job.objects.create(name="testjob", state="FAILED", queue_name="rare")
    assert rare.state == "FAILED"
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE django_dbq_job")
        cursor.execute("SELECT relpages FROM pg_class WHERE relname = 'django_dbq_job'")
        (pages,) = cursor.fetchone()
    monkeypatch.setattr(job_stats, "SAMPLE_PAGES", 2)
    assert pages > 200

    stats = job_stats.queue_stats()
    row = stats.get("rare", {"states": {}, "estimated": []})
    exact = row["states"].get("FAILED") == 1
    assert exact or "FAILED" in row["estimated"], (
        f"queue 'rare' has 1 FAILED job; stats say {row['states']} "
        f"(estimated: {row['estimated']}), 'rare' listed: {'rare' in stats}"
    )


# --- retention ---------------------------------------------------------------


@pytest.mark.parametrize("hours", [-24, float("inf")])
def test_checks__refuse_retention_hours_that_delete_everything_or_crash(hours):
    """Found: DBQ_RETENTION_HOURS=-24 passed the checks (E019 refuses only non-
    numbers) and makes every worker delete every finished job, however new (and
    STOPPING ones whose lease lapsed), every hour; inf passes too and kills the
    retention thread with an OverflowError (not caught) at every due time."""
    with (
        override_settings(DBQ_RETENTION_HOURS=hours),
        pytest.raises(SystemCheckError, match="E019"),
    ):
        call_command("check")


@override_settings(DBQ_RETENTION_HOURS=24, DBQ_RETENTION_BATCH=3)
def test_retention__keeps_a_job_requeued_while_its_batch_waits_for_it():
    """Held: a finished job requeued by a transaction that holds its row while the
    batch reaches it is kept (the lock's recheck sees READY), and the others go."""
    old = timezone.now() - timedelta(days=3)
    jobs = Job.objects.bulk_create([Job(name="testjob", state="COMPLETE") for _ in range(7)])
    for job in jobs:
        age(job, old, None)
    target = sorted(jobs, key=lambda j: j.pk.bytes)[4]
    result: dict = {}
    with raw_conn() as conn:
        conn.autocommit = False
        rv.save(conn, target.pk, state="READY")  # uncommitted: holds the row

        def run():
            from django.db import connections

            try:
                result["n"] = delete_old_jobs(timezone.now() - timedelta(hours=24))
            finally:
                connections["default"].close()

        runner = threading.Thread(target=run)
        runner.start()
        time.sleep(1.0)
        assert runner.is_alive()  # waiting for the row
        conn.commit()
        runner.join(30)
    assert result["n"] == 6
    assert list(Job.objects.values_list("pk", "state")) == [(target.pk, "READY")]


def test_retention__two_runs_at_once_each_delete_a_job_once_and_both_finish():
    """Held: two batched runs at once (two workers) wait for each other's batches,
    find their jobs gone, and together delete each job once, without deadlock."""
    old = timezone.now() - timedelta(days=3)
    jobs = Job.objects.bulk_create([Job(name="testjob", state="COMPLETE") for _ in range(60)])
    for job in jobs:
        age(job, old, None)
    counts, errors = [], []

    def run():
        from django.db import connections

        try:
            counts.append(delete_old_jobs(timezone.now() - timedelta(hours=24), batch_size=4))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connections["default"].close()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sum(counts) == 60
    assert Job.objects.count() == 0


# --- least privilege ---------------------------------------------------------


@pytest.fixture
def roles():
    db = rv.create("rv14")
    yield db
    rv.drop(db)


RETENTION_CALLS = (
    "SELECT * FROM dbq_delete_old_jobs_v5(now(), NULL, 10)",
    "SELECT * FROM dbq_retire_old_jobs_v2(now(), false, NULL, 10)",
    "SELECT dbq_retire_old_jobs_v1(now(), false)",
)


def test_roles__only_maintenance_may_run_batched_retention_and_the_definer_is_pinned(roles):
    """Held: worker, app and none may not run v5 (nor v1/v2); maintenance may run v5
    but not the unpinned v2 directly; v5 is SECURITY DEFINER with a fixed search_path
    and not executable by PUBLIC."""
    with roles.connect("app") as app:
        rv.create_job(app, state="COMPLETE")
    for kind in ("worker", "app", "none"):
        with roles.connect(kind) as conn:
            for statement in RETENTION_CALLS:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
    with roles.connect("maintenance") as conn:
        for statement in RETENTION_CALLS[1:]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        conn.execute("SELECT * FROM dbq_delete_old_jobs_v5(now() - interval '1 day', NULL, 10)")
    with roles.connect("owner") as owner:
        row = owner.execute(
            "SELECT p.prosecdef, p.proconfig, has_function_privilege('public', p.oid, 'EXECUTE')"
            " FROM pg_proc p WHERE p.proname = 'dbq_delete_old_jobs_v5'"
        ).fetchone()
        assert row[0] is True
        assert row[1] == ["search_path=pg_catalog, pg_temp"]
        assert row[2] is False
        (v2_public,) = owner.execute(
            "SELECT has_function_privilege('public', p.oid, 'EXECUTE') FROM pg_proc p"
            " WHERE p.proname = 'dbq_retire_old_jobs_v2'"
        ).fetchone()
        assert v2_public is False


def test_roles__select_only_role_reads_stats_with_the_sample(roles):
    """Held: TABLESAMPLE and pg_class need no more than the SELECT that the app and
    worker roles have; dbq_stats runs as each (and as a hot-standby-like read-only
    session) without error."""
    with roles.connect("app") as app:
        rv.create_job(app, state="COMPLETE")
        rv.create_job(app)
    for kind in ("app", "worker", "maintenance"):
        done = roles.manage(kind, "dbq_stats", "--json")
        assert done.returncode == 0, (kind, done.stderr[-2000:])
    with roles.connect("app") as app:
        app.execute("SET default_transaction_read_only = on")
        app.execute(
            "SELECT queue_name, state, count(*) FROM django_dbq_job TABLESAMPLE SYSTEM (50)"
            " GROUP BY 1, 2"
        )


PAUSE, PRODUCERS = 0.0, 4


def test_retention__a_run_ends_while_jobs_keep_being_enqueued():
    """Held (as far as this machine can push it): a run ends only when a batch
    finds no id after the last one, and new jobs' UUIDv7 ids all come after the
    cursor, so a run chases the newest jobs while they arrive. With 4 enqueuers
    flat out (~400 jobs/s here) it still caught up within a dozen batches; a far
    busier queue could keep it going (a bound taken at the start would end it)."""
    finished_old = Job.objects.bulk_create(
        [Job(name="testjob", state="COMPLETE") for _ in range(5)]
    )
    for job in finished_old:
        age(job, timezone.now() - timedelta(days=3), None)
    stop = threading.Event()
    batches = []
    result: dict = {}

    def enqueue():
        with raw_conn() as conn:
            while not stop.is_set():
                conn.execute(
                    "SELECT dbq_create_job_v2(%s, %s)",
                    [
                        uuid7(),
                        Jsonb(
                            {
                                "name": "testjob",
                                "state": "NEW",
                                "queue_name": "default",
                                "next_task": "tests.jobs.task_one",
                                "workspace": {},
                            }
                        ),
                    ],
                )
                time.sleep(PAUSE)

    def run():
        from django.db import connections

        try:
            result["n"] = delete_old_jobs(
                timezone.now() - timedelta(hours=24),
                batch_size=5000,
                progress=lambda deleted, n: batches.append(n),
            )
        finally:
            connections["default"].close()

    producers = [threading.Thread(target=enqueue) for _ in range(PRODUCERS)]
    for producer in producers:
        producer.start()
    time.sleep(0.5)
    runner = threading.Thread(target=run)
    runner.start()
    runner.join(10)
    ended = not runner.is_alive()
    stop.set()
    for producer in producers:
        producer.join(10)
    runner.join(30)
    assert ended, f"still running after 10 s and {len(batches)} batches while jobs were enqueued"
    assert result["n"] == 5, batches


@override_settings(DBQ_RETENTION_HOURS=24, DBQ_RETENTION_SECONDS=0.001, DBQ_RETENTION_BATCH=2)
def test_worker_retention__runs_leave_no_connection_behind():
    """Held: each run's thread closes its own connection; ten runs leave none open."""
    from django_dbq.worker.loop import Worker

    old = timezone.now() - timedelta(days=3)
    for job in Job.objects.bulk_create([Job(name="testjob", state="COMPLETE") for _ in range(6)]):
        age(job, old, None)
    count = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()"
    )
    with connection.cursor() as cursor:
        cursor.execute(count)
        (before,) = cursor.fetchone()
    worker = Worker(burst=True, handle_signals=False)
    for _ in range(10):
        worker._next_retention_at = 0.0
        worker._retain_if_due()
        worker._retention_thread.join(30)
    with connection.cursor() as cursor:
        cursor.execute(count)
        (after,) = cursor.fetchone()
    assert Job.objects.count() == 0
    assert after <= before
