"""The tick function against a worker role that misuses it or holds its lock."""

from __future__ import annotations

import datetime
import json
import time
import uuid

import psycopg
import pytest

from tests import scratch_roles as rv

PAYLOAD = {"name": "stall", "next_task": "tests.jobs.task_one", "workspace": {}}


@pytest.fixture(scope="module")
def db():
    made = rv.create("tick")
    yield made
    rv.drop(made)


def test_a_transaction_holding_a_schedules_row__makes_other_tick_calls_fail_fast(db):
    with (
        psycopg.connect(db.url("worker")) as holder,
        psycopg.connect(db.url("worker"), autocommit=True) as other,
    ):
        other.execute("SET statement_timeout = '10s'")  # a wait fails the test, never hangs it
        other.execute("SELECT * FROM dbq_enqueue_ticks_v1('stall', '[]')")
        holder.execute("SELECT * FROM dbq_enqueue_ticks_v1('stall', '[]')")  # left open
        due = datetime.datetime.now(datetime.UTC).isoformat()
        tick = json.dumps([{"tick": due, "job_id": str(uuid.uuid4()), "payload": PAYLOAD}])
        started = time.monotonic()

        # The worker's loop gets an error it retries later, not a wait behind it.
        with pytest.raises(psycopg.errors.LockNotAvailable):
            other.execute("SELECT * FROM dbq_enqueue_ticks_v1('stall', %s)", [tick])

        assert time.monotonic() - started < 5
        holder.rollback()


def test_a_tick_without_a_job__must_be_due(db):
    with db.connect("worker") as worker:
        worker.execute("SELECT * FROM dbq_enqueue_ticks_v1('ahead', '[]')")
        ahead = worker.execute("SELECT now() + interval '59 seconds'").fetchone()[0]

        with pytest.raises(psycopg.errors.InvalidParameterValue, match="without a job is not due"):
            worker.execute(
                "SELECT * FROM dbq_enqueue_ticks_v1('ahead', %s)",
                [json.dumps([{"tick": ahead.isoformat(), "job_id": None, "payload": None}])],
            )
