"""Retention in batches (migration 0021): each batch its own transaction, over the
projection once, the proof kept across batches."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from django.db import DatabaseError, connection, transaction
from django.test import override_settings
from django.utils import timezone

from django_dbq.events.append import delete_old_jobs
from django_dbq.models import Job, Retired
from django_dbq.projections.replay import verify_projection
from django_dbq.seals import seal_ledger, verify_proof
from tests import scratch_roles as rv
from tests.test_migration_0011 import functions, migrate, public

pytestmark = pytest.mark.django_db(transaction=True)

KEY = "a-test-ledger-key-of-32-bytes!!!"


def finished(count, days_old=30, state="COMPLETE", queue="default"):
    jobs = Job.objects.bulk_create(
        [Job(name="testjob", state=state, queue_name=queue) for _ in range(count)]
    )
    old = timezone.now() - timedelta(days=days_old)
    for job in jobs:
        job.created = old
        job.save()
    return jobs


def other_connection_count():
    """Jobs a second connection sees: what the batches so far committed."""
    params = connection.get_connection_params()
    with psycopg.connect(**params, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM django_dbq_job").fetchone()[0]


def test_delete_old__in_batches_each_committed_keeps_what_must_stay():
    finished(10)
    young = finished(2, days_old=0)
    waiting = Job.objects.create(name="testjob")
    seen = []

    def progress(deleted, batches):
        seen.append((deleted, batches, other_connection_count()))

    assert (
        delete_old_jobs(timezone.now() - timedelta(hours=24), batch_size=4, progress=progress) == 10
    )

    # 13 jobs in batches of 4, the last ending at the greatest id of the start;
    # each batch was committed when the next began.
    assert [b for _, b, _ in seen] == [1, 2, 3, 4]
    assert seen[-1][0] == 10
    assert [count for _, _, count in seen] == sorted(count for _, _, count in seen)[::-1]
    assert seen[-1][2] == 3
    assert set(Job.objects.values_list("pk", flat=True)) == {waiting.pk, *(j.pk for j in young)}
    assert verify_projection().ok


@override_settings(DBQ_LEDGER_KEY=KEY)
def test_delete_old__in_batches_leaves_seals_that_verify():
    finished(7)
    seal_ledger()
    finished(3)

    assert delete_old_jobs(timezone.now() - timedelta(hours=24), batch_size=2) == 10

    records = list(Retired.objects.all())
    # One record per batch that removed sealed events, all for seal 1, all signed.
    assert {r.seal_id for r in records} == {1} and len(records) >= 4
    assert all(r.mac is not None for r in records)
    assert sum(r.events for r in records) == 7 * 2  # created, updated
    proof = verify_proof()
    assert proof.ok, proof.problems
    assert proof.seals == 1


def test_delete_old__inside_a_transaction_runs_every_batch_in_it():
    finished(5)
    with transaction.atomic():
        assert delete_old_jobs(timezone.now() - timedelta(hours=24), batch_size=2) == 5
        assert other_connection_count() == 5
        transaction.set_rollback(True)
    assert Job.objects.count() == 5


def test_delete_old__refuses_a_batch_of_no_jobs():
    with pytest.raises(ValueError, match="at least 1 job per batch"):
        delete_old_jobs(timezone.now(), batch_size=0)
    with connection.cursor() as cursor, pytest.raises(DatabaseError, match="at least 1 job"):
        cursor.execute("SELECT * FROM dbq_delete_old_jobs_v5(now(), NULL, 0)")
    with (
        connection.cursor() as cursor,
        pytest.raises(DatabaseError, match="needs a number of jobs"),
    ):
        cursor.execute("SELECT * FROM dbq_delete_old_jobs_v5(now(), NULL, NULL)")


def test_previous_release_retention__still_removes_all_in_one_statement():
    finished(6)
    with connection.cursor() as cursor:
        cursor.execute("SELECT dbq_delete_old_jobs_v4(now() - interval '1 day')")
        assert cursor.fetchone()[0] == 6
    assert Job.objects.count() == 0


@pytest.fixture
def at_0020():
    db = rv.create("m21")  # with the roles' grants
    migrate(db, "django_dbq", "0020_time_ordered_ids")
    yield db
    rv.drop(db)


def test_0021__grants_batches_to_the_maintenance_role_only_and_goes_back(at_0020):
    before = functions(at_0020)
    migrate(at_0020)
    assert public(at_0020) == []
    with at_0020.connect("app") as app:
        for _ in range(3):
            rv.create_job(app, state="COMPLETE")
    for role in ("worker", "app"):
        with at_0020.connect(role) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM dbq_delete_old_jobs_v5(now(), NULL, 10)")
    done = at_0020.manage("maintenance", "delete_old_jobs", "--hours", "-1", "--verbosity", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Deleted old jobs (3)" in done.stdout

    migrate(at_0020, "django_dbq", "0020_time_ordered_ids")
    assert functions(at_0020) == before
    migrate(at_0020)
    assert public(at_0020) == []


def test_delete_old__a_temp_table_of_the_session_does_not_end_the_run_early():
    finished(5)
    with connection.cursor() as cursor:
        # What a pooled server session may hold, left by another client: a
        # django_dbq_job of its own that sorts first in the search_path.
        cursor.execute("CREATE TEMP TABLE django_dbq_job (id uuid)")
        cursor.execute("INSERT INTO django_dbq_job VALUES ('00000000-0000-0000-0000-000000000001')")
        try:
            deleted = delete_old_jobs(timezone.now() - timedelta(hours=24), batch_size=2)
        finally:
            cursor.execute("DROP TABLE pg_temp.django_dbq_job")

    assert deleted == 5
    assert Job.objects.count() == 0
