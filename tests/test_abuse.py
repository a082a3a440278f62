"""Bad input and abuse: odd names, JSON edge cases, oversized notifications, ORM writes to the ledger."""

import math
import time

import orjson
import pytest
from django.db import DatabaseError, transaction

from django_dbq.exceptions import InvalidJobError, UnknownJobError
from django_dbq.models import Job, JobEvent
from django_dbq.projections.replay import verify_projection
from django_dbq.worker import Worker
from tests.conftest import in_thread, listen

ODD_QUEUES = ["q'uote", "semi;colon --", 'back\\slash"', "ünïcödé", "emoji 😀", "$1 %s {}"]
ODD_JOB = "it's; DROP TABLE django_dbq_job; --"


def drain(queue):
    Worker(queue, burst=True, handle_signals=False).run()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("queue", ODD_QUEUES)
def test_odd_queue_names__are_stored_notified_and_run(queue):
    job = Job.objects.create(name="testjob", queue_name=queue)

    drain(queue)

    assert Job.objects.get(pk=job.pk).state == Job.STATES.COMPLETE
    assert Job.get_queue_depths() == {}
    assert verify_projection().ok


@pytest.mark.django_db(transaction=True)
def test_odd_job_names__run_like_any_other(settings):
    settings.JOBS = {**settings.JOBS, ODD_JOB: ["tests.jobs.task_one"]}
    job = Job.objects.create(name=ODD_JOB)

    drain("default")

    job.refresh_from_db()
    assert (job.name, job.state) == (ODD_JOB, Job.STATES.COMPLETE)


@pytest.mark.django_db
@pytest.mark.parametrize("field", ["queue_name", "name"])
def test_thousand_character_names__are_refused_clearly(settings, field, count_rows):
    long = "ü" * 1000
    settings.JOBS = {**settings.JOBS, long: ["tests.jobs.task_one"]}
    fields = {"name": "testjob", field: long}

    with pytest.raises(InvalidJobError, match=f"{field} .* is 1000 characters long"):
        Job.objects.create(**fields)
    assert count_rows("django_dbq_jobevent") == 0


@pytest.mark.django_db
def test_unknown_thousand_character_job_name__names_the_known_jobs():
    with pytest.raises(UnknownJobError, match="known jobs: .*testjob"):
        Job.objects.create(name="x" * 1000)


@pytest.mark.django_db(transaction=True)
def test_notify__too_many_queues_for_one_payload_sends_a_wildcard_that_wakes_workers(settings):
    settings.DBQ_POLL_SECONDS = 30
    conn = listen()
    worker = Worker("q0399-" + "z" * 14, max_jobs=1, handle_signals=False)
    thread = in_thread(worker)
    time.sleep(0.5)
    try:
        names = [f"q{n:04d}-" + "z" * 14 for n in range(400)]
        Job.objects.bulk_create([Job(name="testjob", queue_name=name) for name in names])
        payloads = [n.payload for n in conn.notifies(timeout=0.5)]
    finally:
        conn.close()
    thread.join(timeout=10)

    assert len(orjson.dumps(names)) > 8000
    assert payloads == ["*"]
    assert not thread.is_alive() and worker.jobs_run == 1


def deep(levels):
    value = leaf = {}
    for _ in range(levels):
        leaf["next"] = {}
        leaf = leaf["next"]
    return value


@pytest.mark.django_db
@pytest.mark.parametrize(
    "workspace",
    [
        {"big": 2**64 - 1, "small": -(2**63)},
        {"nested": deep(100)},
        {"text": "nul \\u0000 is fine escaped, quotes ' \" and ünïcödé 😀"},
        {"float": 0.1, "small": -2.5e-5, "tiny": 5e-324},
    ],
    ids=["64-bit integers", "100 levels", "text", "floats"],
)
def test_workspace__json_edge_cases_round_trip_exactly(workspace):
    job = Job.objects.create(name="testjob", workspace=workspace)

    assert Job.objects.get(pk=job.pk).workspace == workspace


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("workspace", "message"),
    [
        ({"x": math.nan}, "NaN"),
        ({"x": -math.inf}, "infinite"),
        ({"x": 2**64}, "64-bit"),
        ({1: "int key"}, "Dict key must be str"),
        ({"deep": deep(300)}, "Recursion limit"),
    ],
    ids=["NaN", "infinity", "over 64 bits", "non-string key", "300 levels"],
)
def test_workspace__values_json_cannot_hold_are_refused(workspace, message, count_rows):
    with pytest.raises(InvalidJobError, match=message):
        Job.objects.create(name="testjob", workspace=workspace)
    assert count_rows("django_dbq_jobevent") == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    "write",
    [
        lambda: JobEvent.objects.update(kind="completed"),
        lambda: JobEvent.objects.all().delete(),
        lambda: JobEvent.objects.first().delete(),
    ],
    ids=["queryset update", "queryset delete", "instance delete"],
)
def test_ledger__orm_writes_are_refused_by_the_database(write):
    Job.objects.create(name="testjob")

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        write()
    assert JobEvent.objects.get().kind == "created"


@pytest.mark.django_db(transaction=True)
def test_notify__malformed_notifications_are_logged_and_ignored(settings, caplog):
    from django.db import connection

    settings.DBQ_POLL_SECONDS = 30
    worker = Worker("default", max_jobs=1, handle_signals=False)
    thread = in_thread(worker)
    time.sleep(0.5)
    with connection.cursor() as cursor:
        for payload in ("not json", "{}", "[1", '{"default": 1}', "42", ""):
            cursor.execute("SELECT pg_notify('django_dbq', %s)", [payload])
    time.sleep(0.3)
    assert thread.is_alive()

    job = Job.objects.create(name="testjob")
    thread.join(timeout=10)

    assert not thread.is_alive() and worker.jobs_run == 1
    assert Job.objects.get(pk=job.pk).state == Job.STATES.COMPLETE
    assert "event=bad_notification payload='not json'" in caplog.text
