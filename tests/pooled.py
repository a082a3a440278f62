"""Scenarios run in a child process behind a pool: Django's, or a PgBouncer in front of the server.

`python -m tests.pooled SCENARIO` with DATABASE_URL naming the test database (or
a PgBouncer in front of it, tests/test_pgbouncer.py) and DBQ_TEST_POOL=1 for
Django's pool (tests/test_pool.py). Each scenario asserts what it checks
and exits 0; an AssertionError's traceback is the test's failure message.
"""

from __future__ import annotations

import os
import sys
import threading
from io import StringIO

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402

from django_dbq.models import Job  # noqa: E402
from django_dbq.worker import Worker  # noqa: E402


def command(name: str, *args: object, **options: object) -> str:
    out = StringIO()
    call_command(name, *args, stdout=out, **options)
    return out.getvalue()


def return_connection() -> None:
    """What a request's end or a worker's recovery does: hand the connection to the pool."""
    connection.close()


def application() -> None:
    """Enqueue, save, cancel, requeue, time travel and the maintenance commands."""
    if os.environ.get("DBQ_TEST_POOL"):
        assert connection.pool is not None, "DBQ_TEST_POOL did not turn the pool on"
    one = Job.objects.create(name="testjob", workspace={"n": 1})
    return_connection()
    few = Job.objects.bulk_create([Job(name="testjob") for _ in range(3)])
    many = Job.objects.bulk_create([Job(name="testjob", queue_name="bulk") for _ in range(600)])
    return_connection()
    one.workspace["n"] = 2
    one.save()
    assert Job.objects.get(pk=one.pk).workspace == {"n": 2}
    before_cancel = timezone.now()
    assert one.cancel("pooled") == "cancelled"
    return_connection()
    assert one.requeue("pooled") is True
    assert Job.objects.get(pk=one.pk).state == Job.STATES.READY
    (past,) = Job.objects.filter(pk=one.pk).as_of(before_cancel)
    assert past.state == Job.STATES.NEW and past.workspace == {"n": 2}
    return_connection()
    history = command("job_history", str(one.pk))
    assert "cancelled" in history and "requeued" in history, history
    depths = command("queue_depth", "default", "bulk")
    assert f"default={len(few) + 1}" in depths and f"bulk={len(many)}" in depths, depths
    Job.objects.filter(queue_name="bulk").cancel("done with them")
    return_connection()
    deleted = command("delete_old_jobs", hours=0, verbosity=2)
    assert f"Deleted old jobs ({len(many)})" in deleted, deleted
    assert Job.objects.count() == len(few) + 1


def rolled_back() -> None:
    """A connection closed mid-transaction is rolled back by the pool, not reused dirty."""
    try:
        with transaction.atomic():
            Job.objects.create(name="testjob", workspace={"closed": "mid-transaction"})
            connection.close()
    except Exception as exc:  # Django may refuse to commit on a closed connection
        print(f"atomic block ended with {type(exc).__name__}", file=sys.stderr)
    assert not Job.objects.filter(workspace__closed="mid-transaction").exists()
    with connection.cursor() as cursor:
        cursor.execute("SELECT now() = statement_timestamp()")  # not inside an old transaction
        assert cursor.fetchone()[0]


def run_listening_worker() -> Worker:
    """A worker in a thread that waits on LISTEN until told to stop, as an embedding program runs it."""
    Job.objects.create(name="saves")
    worker = Worker(handle_signals=False)
    listening = threading.Event()
    original = worker._listen

    def listen_and_tell() -> object:
        pgconn = original()
        listening.set()
        return pgconn

    worker._listen = listen_and_tell  # type: ignore[method-assign]

    def target() -> None:
        try:
            worker.run()
        finally:
            connection.close()

    thread = threading.Thread(target=target)
    thread.start()
    assert listening.wait(20), "the worker never waited on LISTEN"
    worker.alive = False
    worker._stop_requested.set()
    thread.join(20)
    assert not thread.is_alive()
    return_connection()
    return worker


def pooled_sessions() -> list:
    """Every connection the pool holds now, borrowed at once (give them back with putconn)."""
    pool = connection.pool
    return [pool.getconn(timeout=5) for _ in range(pool.get_stats()["pool_available"])]


def no_key_in_sessions() -> None:
    """After a worker ran, no pooled session holds its key: not in prepared statements, settings or queries."""
    key = run_listening_worker()._key
    assert Job.objects.filter(workspace__progress=50).exists()
    sessions = pooled_sessions()
    try:
        for session in sessions:
            texts = [
                *(r[0] for r in session.execute("SELECT statement FROM pg_prepared_statements")),
                *(r[0] for r in session.execute("SELECT setting FROM pg_settings")),
                *(r[0] or "" for r in session.execute("SELECT query FROM pg_stat_activity")),
                repr(vars(session._prepared)),
            ]
            assert not [text for text in texts if key in text]
    finally:
        for session in sessions:
            connection.pool.putconn(session)


def no_listen_in_sessions() -> None:
    """After a worker waited on LISTEN, no pooled session is still listening."""
    run_listening_worker()
    sessions = pooled_sessions()
    try:
        channels = [row[0] for s in sessions for row in s.execute("SELECT pg_listening_channels()")]
    finally:
        for session in sessions:
            connection.pool.putconn(session)
    assert channels == [], f"a pooled connection still listens on {channels}"


SCENARIOS = {
    f.__name__: f for f in (application, rolled_back, no_key_in_sessions, no_listen_in_sessions)
}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]]()
    connection.close()
    if connection.pool is not None:
        connection.close_pool()
    print("ok")
