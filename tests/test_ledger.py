"""The database enforces the ledger's invariants, whatever SQL a client sends."""

import uuid

import pgtrigger
import psycopg
import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction

from django_dbq.models import Job
from django_dbq.projections.replay import verify_projection
from tests.conftest import listen
from tests.factories import JobFactory

pytestmark = pytest.mark.django_db


def run_sql(sql, params=None):
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE django_dbq_jobevent SET kind = 'completed'",
        "DELETE FROM django_dbq_jobevent",
        "TRUNCATE django_dbq_jobevent",
    ],
)
def test_ledger__refuses_update_delete_and_truncate(sql, count_rows):
    job = JobFactory()

    with pytest.raises(DatabaseError, match="append-only"):
        run_sql(sql)
    assert job.events.get().kind == "created"
    assert count_rows("django_dbq_jobevent") == 1


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE django_dbq_job SET state = 'COMPLETE'",
        "DELETE FROM django_dbq_job",
        "TRUNCATE django_dbq_job",
        "INSERT INTO django_dbq_job (id, created, modified, name, state, next_task, queue_name,"
        " priority, version) VALUES (gen_random_uuid(), now(), now(), 'x', 'NEW', '', 'default',"
        " 0, 1)",
    ],
)
def test_projection__refuses_writes_that_do_not_come_from_the_ledger(sql, count_rows):
    job = JobFactory()

    with pytest.raises(DatabaseError, match="projection of the job ledger") as raised:
        run_sql(sql)
    assert isinstance(raised.value.__cause__, psycopg.errors.InsufficientPrivilege)
    assert "Job.objects.create()" in raised.value.__cause__.diag.message_hint
    assert Job.objects.get().state == job.state
    assert count_rows("django_dbq_job") == 1


def test_projection__write_guard_closes_after_the_trigger():
    job = JobFactory()

    with transaction.atomic():
        job.priority = 2
        job.save()
        with pytest.raises(DatabaseError, match="projection"), transaction.atomic():
            run_sql("UPDATE django_dbq_job SET priority = 9")
    assert Job.objects.get().priority == 2


def insert_event(job_id, version, kind, payload="{}"):
    run_sql(
        "INSERT INTO django_dbq_jobevent (job_id, version, kind, payload) VALUES (%s, %s, %s, %s)",
        [job_id, version, kind, payload],
    )


@pytest.mark.parametrize(
    ("state", "kind"),
    [
        ("COMPLETE", "claimed"),
        ("FAILED", "claimed"),
        ("NEW", "completed"),
        ("NEW", "task_done"),
        ("READY", "failed"),
        ("NEW", "stopping"),
        ("COMPLETE", "lease_expired"),
        ("NEW", "no_such_kind"),
    ],
)
def test_apply__refuses_illegal_transitions(state, kind):
    job = JobFactory(state=state)

    with pytest.raises(IntegrityError, match=f"illegal transition: {kind} event"):
        insert_event(job.id, 2, kind)
    assert (Job.objects.get().state, job.events.count()) == (state, 1)


def test_apply__refuses_an_updated_event_that_moves_a_running_job():
    job = JobFactory()
    insert_event(job.id, 2, "claimed", '{"worker": "w1"}')

    with pytest.raises(IntegrityError, match="in state PROCESSING to READY"):
        insert_event(job.id, 3, "updated", '{"state": "READY"}')
    assert Job.objects.get().state == "PROCESSING"


def test_apply__refuses_a_version_that_does_not_follow():
    job = JobFactory()

    with pytest.raises(IntegrityError, match="has version 5, expected 2"):
        insert_event(job.id, 5, "claimed")
    assert Job.objects.get().version == 1


def test_apply__refuses_an_event_for_a_job_that_was_never_created():
    with pytest.raises(IntegrityError, match="not in the projection"):
        insert_event(uuid.uuid4(), 1, "claimed")


def test_apply__refuses_creating_a_job_twice():
    job = JobFactory()

    with pytest.raises(IntegrityError):
        insert_event(job.id, 1, "created", '{"name": "testjob"}')
    with pytest.raises(IntegrityError, match="already exists"):
        insert_event(job.id, 2, "created", '{"name": "testjob"}')


def test_apply__a_statement_with_one_bad_event_applies_none(count_rows):
    good, done = JobFactory(), JobFactory(state="COMPLETE")

    with pytest.raises(IntegrityError, match="illegal transition"):
        run_sql(
            "INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)"
            " VALUES (%s, 2, 'claimed', '{}'), (%s, 2, 'claimed', '{}')",
            [good.id, done.id],
        )
    assert Job.objects.get(pk=good.pk).state == "NEW"
    assert count_rows("django_dbq_jobevent") == 2


def test_apply__one_statement_applies_events_of_many_jobs():
    jobs = Job.objects.bulk_create([Job(name="twotasks") for _ in range(20)])

    run_sql(
        "INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)"
        " SELECT unnest(%s::uuid[]), 2, 'claimed', '{\"worker\": \"w\"}'",
        [[job.id for job in jobs]],
    )
    assert set(Job.objects.values_list("state", flat=True)) == {"PROCESSING"}


def test_apply__cannot_be_switched_off_with_pgtrigger_ignore():
    # A statement the trigger skipped would leave a ledger that replay does not match.
    job = JobFactory()
    with pgtrigger.ignore("django_dbq.JobEvent:apply_events"):
        insert_event(job.id, 2, "claimed", '{"worker": "w1"}')

    assert Job.objects.get(pk=job.pk).state == "PROCESSING"
    assert verify_projection().ok


@pytest.mark.parametrize(
    "ignored", ["django_dbq.Job:protect_projection", "django_dbq.JobEvent:protect_ledger"]
)
def test_guards__cannot_be_switched_off_with_pgtrigger_ignore(ignored):
    JobFactory()
    with pgtrigger.ignore(ignored):
        with pytest.raises(DatabaseError, match="projection of the job ledger"):
            run_sql("UPDATE django_dbq_job SET priority = 9")
        with pytest.raises(DatabaseError, match="append-only"):
            run_sql("DELETE FROM django_dbq_jobevent")

    assert Job.objects.get().priority == 0


@pytest.mark.django_db(transaction=True)
def test_notify__a_statement_of_new_and_moved_jobs_names_each_queue_once():
    held = JobFactory(queue_name="shared")
    insert_event(held.id, 2, "claimed", '{"worker": "w1"}')
    listener = listen()
    try:
        run_sql(
            "INSERT INTO django_dbq_jobevent (job_id, version, kind, payload) VALUES"
            ' (%s, 1, \'created\', \'{"name": "testjob", "queue_name": "shared"}\'),'
            ' (%s, 3, \'released\', \'{"worker": "w1", "state": "READY"}\')',
            [uuid.uuid4(), held.id],
        )
        payloads = [n.payload for n in listener.notifies(timeout=0.5)]
    finally:
        listener.close()

    assert Job.objects.filter(queue_name="shared", state="READY").count() == 1
    assert payloads == ['["shared"]']


@pytest.mark.parametrize("run_after", ["13/01/2030 00:00", "now", "2030-01-01 00:00"])
def test_apply__refuses_payload_times_replay_could_read_otherwise_even_from_the_owner(
    run_after, count_rows
):
    with pytest.raises(DatabaseError, match="not an ISO 8601 time with its offset"):
        run_sql(
            "INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)"
            " VALUES (%s, 1, 'created', jsonb_build_object('name', 'testjob', 'run_after', %s::text))",
            [uuid.uuid4(), run_after],
        )
    assert count_rows("django_dbq_jobevent") == 0
