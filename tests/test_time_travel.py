"""Time travel: the projection as it was at a past moment, rebuilt from the ledger."""

from io import StringIO

import orjson
import pytest
from django.core.management import call_command
from django.db import connection

from django_dbq.events.append import append_events
from django_dbq.models import Job


def db_now():
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


def append(job, kind, **payload):
    append_events([(job.id, kind, orjson.dumps(payload).decode())])


@pytest.fixture
def history(db):
    """Two jobs and the moments between their events."""
    first = Job.objects.create(name="twotasks", workspace={"step": 0})
    moments = {"created": db_now()}
    append(first, "claimed", worker="w1", lease_until="2030-01-01T00:00:00+00:00")
    append(
        first,
        "task_done",
        task="tests.jobs.task_one",
        next_task="tests.jobs.task_two",
        workspace={"step": 1},
    )
    moments["between tasks"] = db_now()
    second = Job.objects.create(name="testjob", queue_name="other")
    append(first, "claimed", worker="w2", lease_until="2030-01-01T00:00:00+00:00")
    append(first, "completed", task="tests.jobs.task_two", workspace={"step": 2})
    first.refresh_from_db()
    second.refresh_from_db()
    return first, second, moments


def test_as_of__rebuilds_each_moment_of_a_known_history(history):
    first, second, moments = history

    then = {job.id: job for job in Job.objects.as_of(moments["between tasks"])}
    at_start = Job.objects.as_of(moments["created"])

    assert [(j.id, j.state, j.workspace) for j in at_start] == [(first.id, "NEW", {"step": 0})]
    assert set(then) == {first.id}
    assert (then[first.id].state, then[first.id].next_task, then[first.id].workspace) == (
        "READY",
        "tests.jobs.task_two",
        {"step": 1},
    )
    # The live projection is untouched.
    assert Job.objects.get(pk=first.pk).state == "COMPLETE"
    assert Job.objects.count() == 2


def test_as_of__on_a_filtered_queryset_rebuilds_only_those_jobs(history):
    first, second, moments = history

    (past,) = Job.objects.filter(pk=first.pk).as_of(moments["between tasks"])

    assert (past.id, past.state, past.version) == (first.id, "READY", 3)
    assert Job.objects.filter(pk=second.pk).as_of(moments["created"]) == []


def test_job_history_as_of__prints_the_timeline_then_and_the_state_then(history):
    first, _, moments = history
    out = StringIO()

    call_command(
        "job_history", str(first.id), "--as-of", moments["between tasks"].isoformat(), stdout=out
    )

    lines = out.getvalue().splitlines()
    assert [line.split()[2] for line in lines[1:4]] == ["created", "claimed", "task_done"]
    assert lines[-1].startswith(f"as of {moments['between tasks'].isoformat()}: state=READY")
    assert '"step":1' in lines[-1]


def test_replay_events_as_of__prints_jobs_per_queue_and_state_then(history):
    _, _, moments = history
    out = StringIO()

    call_command("replay_events", "--as-of", moments["between tasks"].isoformat(), stdout=out)

    assert out.getvalue().splitlines()[1:] == ["  default READY 1"]
    assert Job.objects.filter(state="COMPLETE").count() == 1
