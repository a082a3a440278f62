import logging
import math
from datetime import datetime, timedelta
from unittest import mock

import orjson
import pgtrigger
import pytest
from django.db import IntegrityError, connection, transaction
from django.db.transaction import TransactionManagementError
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_dbq.events import append
from django_dbq.exceptions import InvalidJobError, JobConfigError, UnknownJobError
from django_dbq.models import Job, JobEvent

pytestmark = pytest.mark.django_db


def test_create__returns_a_new_job_with_first_task_and_empty_workspace():
    job = Job.objects.create(name="twotasks")

    stored = Job.objects.get(pk=job.pk)
    assert job.state == stored.state == Job.STATES.NEW
    assert job.next_task == stored.next_task == "tests.jobs.task_one"
    assert job.workspace == stored.workspace == {}
    assert job.created == stored.created and job.modified == stored.modified
    assert stored.version == 1


def test_create__keeps_workspace_queue_priority_and_run_after():
    when = timezone.now() + timedelta(minutes=10)
    job = Job.objects.create(
        name="testjob", workspace={"user_id": 7}, queue_name="other", priority=2, run_after=when
    )

    stored = Job.objects.get(pk=job.pk)
    assert (stored.workspace, stored.queue_name, stored.priority, stored.run_after) == (
        {"user_id": 7},
        "other",
        2,
        when,
    )
    assert Job.objects.filter(workspace__user_id=7).get() == stored


def test_create__records_one_created_event_with_the_job_fields():
    job = Job.objects.create(name="testjob", workspace={"a": 1}, priority=3)

    (event,) = job.events.all()
    assert (event.version, event.kind) == (1, "created")
    assert event.payload["workspace"] == {"a": 1}
    assert event.payload["priority"] == 3
    assert event.payload["next_task"] == "tests.jobs.task_one"
    assert JobEvent.objects.filter(kind="created", payload__priority=3).get() == event


def test_create__accepts_the_list_form_of_jobs_setting():
    job = Job.objects.create(name="listform")

    assert job.next_task == "tests.jobs.task_one"


def test_create__runs_the_creation_hook_before_writing():
    job = Job.objects.create(name="hooked")

    assert Job.objects.get(pk=job.pk).workspace == {"hooked": True}


def test_create__failing_creation_hook_writes_nothing_and_logs(caplog, count_rows):
    with caplog.at_level(logging.ERROR, logger="django_dbq"):
        Job.objects.create(name="badhook")

    assert count_rows("django_dbq_job") == 0
    assert count_rows("django_dbq_jobevent") == 0
    assert "creation hook raised an exception" in caplog.text


def test_create__jobs_created_together_keep_their_order():
    first = Job.objects.create(name="testjob")
    second = Job.objects.create(name="testjob")

    assert list(Job.objects.all()) == [first, second]


def test_create__orders_by_priority_then_age():
    normal = Job.objects.create(name="testjob")
    critical = Job.objects.create(name="testjob", priority=2)
    important = Job.objects.create(name="testjob", priority=1)

    assert list(Job.objects.all()) == [critical, important, normal]


def test_bulk_create__writes_all_created_events_in_one_statement():
    jobs = [Job(name="hooked", workspace={"n": n}) for n in range(50)]

    with CaptureQueriesContext(connection) as queries:
        created = Job.objects.bulk_create(jobs)

    inserts = [q for q in queries.captured_queries if "dbq_create_job" in q["sql"]]
    assert len(inserts) == 1
    assert len(created) == 50
    stored = Job.objects.order_by("created")
    assert [j.workspace for j in stored] == [{"n": n, "hooked": True} for n in range(50)]
    assert {j.next_task for j in stored} == {"tests.jobs.task_one"}


def test_bulk_create__skips_a_job_whose_creation_hook_raises(count_rows):
    created = Job.objects.bulk_create([Job(name="testjob"), Job(name="badhook")])

    assert [job.name for job in created] == ["testjob"]
    assert count_rows("django_dbq_job") == count_rows("django_dbq_jobevent") == 1


def test_bulk_create__many_batches_stream_in_one_logged_call_and_keep_their_order():
    jobs = [Job(name="testjob", workspace={"n": n}) for n in range(1100)]

    with CaptureQueriesContext(connection) as queries:
        created = Job.objects.bulk_create(jobs)

    (insert,) = [q for q in queries.captured_queries if "dbq_create_job" in q["sql"]]
    assert "3 times" in insert["sql"]
    assert created == jobs
    stored = list(Job.objects.order_by("created"))
    assert [job.workspace["n"] for job in stored] == list(range(1100))
    assert [job.created for job in stored] == [job.created for job in created]


def test_bulk_create__a_bad_workspace_in_a_later_batch_writes_nothing(count_rows):
    jobs = [Job(name="testjob") for _ in range(1200)]
    jobs[-1].workspace = {"x": math.nan}

    with pytest.raises(InvalidJobError, match="NaN"):
        Job.objects.bulk_create(jobs)

    assert count_rows("django_dbq_jobevent") == count_rows("django_dbq_job") == 0
    assert len(Job.objects.bulk_create([Job(name="testjob") for _ in range(600)])) == 600


def test_bulk_create__creation_hooks_may_query_the_database_in_a_long_call():
    Job.objects.create(name="testjob")

    created = Job.objects.bulk_create([Job(name="querying") for _ in range(1200)])

    assert {job.workspace["waiting"] for job in created} == {1}
    assert Job.objects.count() == 1201


def test_bulk_create__in_batches():
    created = Job.objects.bulk_create([Job(name="testjob") for _ in range(7)], batch_size=3)

    assert len(created) == Job.objects.count() == 7


def test_create__unknown_name_names_the_known_jobs_and_writes_nothing(count_rows):
    with pytest.raises(UnknownJobError, match=r"'nope'.*known jobs: .*testjob"):
        Job.objects.create(name="nope")

    assert count_rows("django_dbq_jobevent") == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"workspace": {"when": object()}}, "cannot be stored as JSON"),
        ({"workspace": {"x": {1, 2}}}, "cannot be stored as JSON"),
        ({"workspace": {"x": math.nan}}, "NaN"),
        ({"workspace": {"x": [math.inf]}}, "NaN or an infinite"),
        ({"workspace": {"big": 2**70}}, "cannot be stored as JSON"),
        ({"priority": 40000}, "out of range"),
        ({"priority": "high"}, "must be an integer"),
        ({"run_after": datetime(2030, 1, 1)}, "naive datetime while USE_TZ"),
        ({"run_after": "tomorrow"}, "must be a datetime"),
        ({"queue_name": "q" * 21}, "at most 20"),
        ({"queue_name": "x'; DROP TABLE django_dbq_job; --" * 30}, "at most 20"),
        ({"state": Job.STATES.CANCELLED}, "cannot be created in state"),
    ],
)
def test_create__bad_input_raises_a_clear_error_and_writes_nothing(fields, message, count_rows):
    with pytest.raises(InvalidJobError, match=message):
        Job.objects.create(name="testjob", **fields)

    assert count_rows("django_dbq_job") == 0
    assert count_rows("django_dbq_jobevent") == 0


def test_create__job_without_tasks_is_a_config_error(settings, count_rows):
    settings.JOBS = {"empty": {"tasks": []}}

    with pytest.raises(JobConfigError, match="lists no tasks"):
        Job.objects.create(name="empty")

    assert count_rows("django_dbq_jobevent") == 0


def test_create__job_repeating_a_task_path_is_a_config_error(settings, count_rows):
    settings.JOBS = {"loop": ["tests.jobs.task_one", "tests.jobs.task_one"]}

    with pytest.raises(JobConfigError, match="more than once"):
        Job.objects.create(name="loop")

    assert count_rows("django_dbq_jobevent") == 0


def test_bulk_create__one_bad_job_writes_none_of_the_batch(count_rows):
    with pytest.raises(InvalidJobError):
        Job.objects.bulk_create([Job(name="testjob"), Job(name="testjob", priority=10**6)])

    assert count_rows("django_dbq_jobevent") == 0


def test_create__in_a_state_users_create_for_tests():
    job = Job.objects.create(name="testjob", state=Job.STATES.FAILED)

    assert Job.objects.get(pk=job.pk).state == Job.STATES.FAILED


def test_create__is_one_statement():
    with CaptureQueriesContext(connection) as queries:
        Job.objects.create(name="testjob", workspace={"a": 1})

    (query,) = queries.captured_queries
    assert "dbq_create_job_v2" in query["sql"]


def test_bulk_create__in_a_broken_transaction_says_so_like_any_query():
    with transaction.atomic():
        with pytest.raises(IntegrityError), transaction.atomic(savepoint=False):
            job = Job.objects.create(name="testjob")
            Job.objects.create(id=job.pk, name="testjob")
        with pytest.raises(TransactionManagementError):
            Job.objects.bulk_create([Job(name="testjob") for _ in range(600)])


def test_enqueue_and_operate__inside_pgtrigger_ignore_of_other_triggers():
    # pgtrigger.ignore() prepends a statement with a positional parameter to every
    # query inside it; the ledger's queries must run there like the ORM's.
    with pgtrigger.ignore("django_dbq.JobEvent:protect_ledger"), transaction.atomic():
        job = Job.objects.create(name="testjob")
        created = Job.objects.bulk_create([Job(name="testjob") for _ in range(1100)])
        job.priority = 5
        job.save()
        job.cancel()
        created[0].cancel()
        depths = Job.get_queue_depths()

    assert len(created) == 1100
    assert Job.objects.get(pk=job.pk).state == Job.STATES.CANCELLED
    assert Job.objects.get(pk=job.pk).priority == 5
    assert depths == {"default": 1099}


def test_bulk_create__jobs_alike_send_their_payload_once_and_each_gets_its_own():
    when = timezone.now() + timedelta(hours=1)
    jobs = [Job(name="testjob") for _ in range(500)]
    jobs += [Job(name="testjob", queue_name="other", priority=3, workspace={"n": 1})]
    jobs += [Job(name="twotasks", run_after=when)]
    jobs += [Job(name="testjob") for _ in range(100)]

    sent = []
    encode = append.shared_payloads

    def spy(events):
        sent.append(encode(events))
        return sent[-1]

    with mock.patch.object(append, "shared_payloads", spy):
        created = Job.objects.bulk_create(jobs)

    # Two batches: the first says its payload once, not 500 times; the second three.
    assert [len(orjson.loads(payloads)) for _, payloads, _ in sent] == [1, 3]
    assert [len(ids) for ids, _, _ in sent] == [500, 102]
    assert created == jobs
    stored = {job.pk: job for job in Job.objects.all()}
    assert len(stored) == 602
    for job in jobs:
        row = stored[job.pk]
        assert (row.name, row.queue_name, row.priority, row.workspace, row.run_after) == (
            job.name,
            job.queue_name,
            job.priority,
            job.workspace,
            job.run_after,
        )
        (event,) = JobEvent.objects.filter(job_id=job.pk)
        assert event.payload["name"] == job.name and event.payload["workspace"] == job.workspace
    # The order given is the order created (claim order among equals).
    assert [job.pk for job in Job.objects.order_by("created")] == [
        job.pk for job in sorted(jobs, key=lambda j: j.created)
    ]
    assert [job.created for job in jobs] == sorted(job.created for job in jobs)


def test_job__built_with_keywords_as_django_builds_it():
    from django.db import models

    when = timezone.now()
    for kwargs in (
        {},
        {"name": "testjob"},
        {"name": "testjob", "workspace": {"a": [1]}, "queue_name": "q", "priority": -2},
        {"name": "testjob", "run_after": when, "state": Job.STATES.READY, "created": when},
        {"id": Job().pk, "name": "testjob", "unique_key": "k"},
    ):
        quick = Job(**kwargs)
        django = Job.__new__(Job)
        models.Model.__init__(django, **kwargs)
        if "id" not in kwargs:
            django.id = quick.id
        expected = {k: v for k, v in django.__dict__.items() if k != "_state"}
        assert {k: v for k, v in quick.__dict__.items() if k != "_state"} == expected
        assert quick._state.adding and quick._state.db is None
    assert Job().pk != Job().pk
    # The rest goes through Django's own __init__, with its errors.
    with pytest.raises(TypeError, match="unexpected keyword arguments: 'colour'"):
        Job(name="testjob", colour="red")
    assert Job(pk=Job().pk).pk is not None  # pk is a property, not a field name


def test_job__init_signals_still_reach_their_receivers():
    from django.db.models.signals import post_init, pre_init

    seen = []

    def before(sender, args, kwargs, **extra):
        seen.append(("pre", dict(kwargs)))

    def after(sender, instance, **extra):
        seen.append(("post", instance.name))

    pre_init.connect(before, sender=Job)
    post_init.connect(after, sender=Job)
    try:
        Job(name="testjob")
    finally:
        pre_init.disconnect(before, sender=Job)
        post_init.disconnect(after, sender=Job)
    assert seen == [("pre", {"name": "testjob"}), ("post", "testjob")]
