"""Audit reads (verify, as_of, job_history --as-of) run under MVCC: no wait, no lock, no write.

Each read is tried in its own transaction and inside a caller's READ COMMITTED
and REPEATABLE READ transactions, against second connections that append,
enqueue and watch pg_locks while it runs.
"""

import re
import threading
from contextlib import contextmanager
from io import StringIO

import pgtrigger
import psycopg
import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from django_dbq.models import Job
from django_dbq.projections.replay import verify_projection

pytestmark = pytest.mark.django_db(transaction=True)

MODES = ("own transaction", "inside READ COMMITTED", "inside REPEATABLE READ")
COLUMNS = [f.attname for f in Job._meta.concrete_fields]


def verify(when, job):
    result = verify_projection()
    assert result.ok, [d.describe() for d in result.drift]
    return result.jobs


def as_of_all(when, job):
    return sorted((j.id, j.priority) for j in Job.objects.as_of(when))


def as_of_some(when, job):
    return [(j.id, j.priority) for j in Job.objects.filter(pk=job.pk).as_of(when)]


def job_history(when, job):
    out = StringIO()
    call_command("job_history", str(job.id), "--as-of", when.isoformat(), stdout=out)
    return out.getvalue().splitlines()[-1]


def replay_as_of(when, job):
    out = StringIO()
    call_command("replay_events", "--as-of", when.isoformat(), stdout=out)
    return out.getvalue().splitlines()[1:]


READS = {
    "verify": verify,
    "as_of": as_of_all,
    "filtered as_of": as_of_some,
    "job_history --as-of": job_history,
    "replay_events --as-of": replay_as_of,
}


def other_connection():
    params = {k: v for k, v in connection.get_connection_params().items() if k != "context"}
    return psycopg.connect(**params, autocommit=True)


def db_now():
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


def rows():
    return sorted(Job.objects.values_list(*COLUMNS))


@contextmanager
def read_in(mode):
    """Where the read runs: a transaction of its own, or inside a caller's."""
    if mode == "own transaction":
        yield
        return
    with transaction.atomic():
        if mode == "inside REPEATABLE READ":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        yield


@contextmanager
def waiting_refused():
    """Any lock the read would wait for is an error, not a wait."""
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '300ms'")
        cursor.execute("SET statement_timeout = '20s'")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
            cursor.execute("RESET statement_timeout")


@pytest.fixture
def job():
    return Job.objects.create(name="testjob", workspace={"n": 1})


@pytest.mark.parametrize("holder", ["uncommitted event", "ROW EXCLUSIVE only"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("read", READS)
def test_audit_read__does_not_wait_for_a_transaction_appending_to_the_ledger(
    job, read, mode, holder
):
    when = db_now()
    expected = READS[read](when, job)
    with other_connection() as other, other.transaction():
        if holder == "uncommitted event":
            other.execute(
                "INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)"
                " VALUES (%s, 2, 'updated', '{\"priority\": 5}')",
                [job.id],
            )
        else:
            other.execute("LOCK TABLE django_dbq_jobevent IN ROW EXCLUSIVE MODE")

        with waiting_refused(), read_in(mode):
            result = READS[read](when, job)

        assert result == expected  # the uncommitted event is not seen
        raise psycopg.Rollback()


class DuringRead:
    """Runs `action` once, right after the read's rebuild statement, while the read is open."""

    def __init__(self, action):
        self.action = action
        self.done = False

    def __call__(self, execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not self.done and re.search(r"dbq_replay_\w+\(", sql):
            self.done = True
            self.action()
        return result


def enqueue_in_thread():
    """Job.objects.create on another connection, refusing to wait for any lock."""
    outcome = {}

    def target():
        try:
            with connection.cursor() as cursor:
                cursor.execute("SET lock_timeout = '300ms'")
                cursor.execute("SET statement_timeout = '5s'")
            outcome["job"] = Job.objects.create(name="testjob", queue_name="during")
        except Exception as exc:  # reported by the test
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(10)
    return outcome


def locks_of(pid):
    """The locks a backend holds on the app's tables, indexes and sequences."""
    with other_connection() as observer:
        return sorted(
            observer.execute(
                "SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                " WHERE l.pid = %s AND c.relnamespace = current_schema()::regnamespace",
                [pid],
            ).fetchall()
        )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("read", ["verify", "as_of", "filtered as_of"])
def test_enqueue__does_not_wait_while_an_audit_read_runs_and_the_read_locks_nothing(
    job, read, mode
):
    Job.objects.create(name="twotasks", priority=3)
    when = db_now()
    before = rows()
    expected = READS[read](when, job)
    seen = {}

    def during():
        seen["enqueue"] = enqueue_in_thread()
        seen["locks"] = locks_of(connection.connection.info.backend_pid)
        with other_connection() as observer:
            observer.execute("SET lock_timeout = '300ms'")
            seen["live"] = observer.execute("SELECT count(*) FROM django_dbq_job").fetchone()[0]

    hook = DuringRead(during)
    with waiting_refused(), connection.execute_wrapper(hook), read_in(mode):
        result = READS[read](when, job)

    assert hook.done
    assert "error" not in seen["enqueue"], seen["enqueue"]["error"]
    assert seen["live"] == len(before) + 1  # readable and untouched, the new job in it
    assert {mode for _, mode in seen["locks"]} == {"AccessShareLock"}, seen["locks"]
    assert {name for name, _ in seen["locks"]} >= {"django_dbq_jobevent"}
    # The read saw one snapshot: the job enqueued meanwhile is not in it.
    assert result == expected
    new = seen["enqueue"]["job"]
    assert [r for r in rows() if r[0] != new.id] == before


@pytest.mark.parametrize("mode", MODES)
def test_verify__reports_drift_and_leaves_nothing_behind_in_every_mode(mode):
    changed = Job.objects.create(name="testjob")
    gone = Job.objects.create(name="testjob")
    Job.objects.create(name="testjob")
    with transaction.atomic(), connection.cursor() as cursor:
        # Opens the projection's write guard by hand, as only a bug or an attack would.
        cursor.execute("SELECT set_config('dbq.applying', 'on', true)")
        cursor.execute("UPDATE django_dbq_job SET priority = 7 WHERE id = %s", [changed.id])
        cursor.execute("DELETE FROM django_dbq_job WHERE id = %s", [gone.id])
    before = rows()

    with read_in(mode):
        first = verify_projection()
        second = verify_projection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass('pg_temp.dbq_scratch_job')")
            assert cursor.fetchone() == (None,)

    assert (first.drift_count, first.events, first.jobs) == (2, 3, 3)
    assert sorted(d.describe() for d in first.drift) == sorted(
        [
            f"job {changed.id}: priority: live=7 replayed=0",
            f"job {gone.id}: missing from the live projection, present after replay",
        ]
    )
    assert [d.describe() for d in second.drift] == [d.describe() for d in first.drift]
    assert rows() == before


@pytest.mark.parametrize("mode", MODES)
def test_audit_reads__work_while_a_user_table_has_a_foreign_key_to_the_projection(job, mode):
    when = db_now()
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE user_invoice (id serial PRIMARY KEY,"
            " job_id uuid NOT NULL REFERENCES django_dbq_job (id))"
        )
        cursor.execute("INSERT INTO user_invoice (job_id) VALUES (%s)", [job.id])
    try:
        with read_in(mode):
            results = {name: read(when, job) for name, read in READS.items()}
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE user_invoice")

    assert results["verify"] == 1
    assert results["as_of"] == results["filtered as_of"] == [(job.id, 0)]
    assert "state=NEW" in results["job_history --as-of"]
    assert results["replay_events --as-of"] == ["  default NEW 1"]


def test_as_of__inside_read_committed_reads_the_ledger_once_in_one_statement(job):
    """The copy that gives a READ COMMITTED caller one snapshot: a job committed
    by another connection after it was made is not half seen."""
    Job.objects.create(name="testjob")

    def commit_elsewhere():
        with other_connection() as other:
            other.execute("SET lock_timeout = '300ms'")
            other.execute(
                "INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)"
                " VALUES (%s, 2, 'updated', '{\"priority\": 9}')",
                [job.id],
            )

    hook = DuringRead(commit_elsewhere)
    with connection.execute_wrapper(hook), transaction.atomic():
        result = verify_projection()
        after = {j.id: j.priority for j in Job.objects.as_of(db_now())}

    assert hook.done
    assert (result.ok, result.jobs, result.events) == (True, 2, 2)
    assert after[job.id] == 9  # a later read sees it


@pytest.mark.parametrize("mode", MODES)
def test_audit_reads__run_inside_pgtrigger_ignore(job, mode):
    # pgtrigger.ignore() puts a statement of its own before every query: the
    # read's transaction is opened REPEATABLE READ without a statement of ours.
    when = db_now()
    expected = {name: read(when, job) for name, read in READS.items()}

    with read_in(mode), pgtrigger.ignore("django_dbq.JobEvent:protect_ledger"):
        results = {name: read(when, job) for name, read in READS.items()}

    assert results == expected


@pytest.mark.parametrize("mode", MODES)
def test_audit_reads__temp_tables_named_like_ours_do_not_stand_in_for_them(mode):
    changed = Job.objects.create(name="testjob")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('dbq.applying', 'on', true)")
        cursor.execute("UPDATE django_dbq_job SET priority = 7 WHERE id = %s", [changed.id])
    with connection.cursor() as cursor:
        # Code sharing the session hides the drift from the reads, and forges a ledger.
        cursor.execute("CREATE TEMP TABLE django_dbq_job AS SELECT * FROM public.django_dbq_job")
        cursor.execute("UPDATE pg_temp.django_dbq_job SET priority = 0")
        cursor.execute(
            "CREATE TEMP TABLE django_dbq_jobevent AS SELECT * FROM public.django_dbq_jobevent"
        )
        cursor.execute(
            "UPDATE pg_temp.django_dbq_jobevent SET payload = payload || '{\"priority\": 7}'"
        )
    try:
        with read_in(mode):
            found = verify_projection()
            (past,) = Job.objects.filter(pk=changed.pk).as_of(timezone.now())
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE pg_temp.django_dbq_job, pg_temp.django_dbq_jobevent")

    assert [d.describe() for d in found.drift] == [f"job {changed.id}: priority: live=7 replayed=0"]
    assert past.priority == 0
