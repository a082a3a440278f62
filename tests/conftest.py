from __future__ import annotations

import orjson
import pytest
from django.db import connection

from django_dbq.events.append import append_events
from django_dbq.testing import allow_flush

allow_flush()


@pytest.fixture
def append():
    """Append one event to a job through the public append API; return its version."""

    def _append(job_id, kind, **payload):
        (appended,) = append_events([(job_id, kind, orjson.dumps(payload).decode())])
        return appended.version

    return _append


@pytest.fixture
def count_rows():
    def _count(table):
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {table}")  # table names are test constants
            return cursor.fetchone()[0]

    return _count


@pytest.fixture
def runs_file(tmp_path, monkeypatch):
    """The file in which tests.jobs.record_run counts task runs, also for child processes."""
    path = tmp_path / "runs.txt"
    path.touch()
    monkeypatch.setenv("DBQ_TEST_RUNS", str(path))
    return path


def listen():
    """A second connection to the test database, listening on the workers' channel."""
    import psycopg
    from django.db import connection

    params = {k: v for k, v in connection.get_connection_params().items() if k != "context"}
    conn = psycopg.connect(**params, autocommit=True)
    conn.execute("LISTEN django_dbq")
    return conn


def in_thread(worker):
    """Run a worker in a thread that closes its own database connection."""
    import threading

    from django.db import connection

    def target():
        try:
            worker.run()
        finally:
            connection.close()

    thread = threading.Thread(target=target)
    thread.start()
    return thread
