"""django-db-queue 3.3's own test scenarios, in our words, each checked against the ledger.

3.3's test module creates jobs in any state, ages them by saving `created`, and
counts, orders and deletes them. Here each scenario also checks what the ledger
recorded and that replaying it gives the live projection.
"""

import time
from datetime import datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from django_dbq.events.claims import expire_leases
from django_dbq.events.models import JobEvent
from django_dbq.exceptions import InvalidJobError
from django_dbq.models import Job
from django_dbq.projections.replay import verify_projection

pytestmark = pytest.mark.django_db(transaction=True)


def kinds(job):
    return list(JobEvent.objects.filter(job_id=job.pk).order_by("version").values_list("kind"))


def assert_replay_equals_live():
    result = verify_projection()
    assert result.ok, [d.describe() for d in result.drift]


def aged(job, by):
    job.created = timezone.now() - by
    job.save()
    return job


def later():
    return timezone.now() + timedelta(hours=1)


def test_a_job_is_created_in_each_of_the_six_states_with_one_created_event():
    states = ["NEW", "READY", "PROCESSING", "STOPPING", "FAILED", "COMPLETE"]
    made = [Job.objects.create(name="testjob", state=state) for state in states]

    assert [Job.objects.get(pk=job.pk).state for job in made] == states
    assert all(kinds(job) == [("created",)] for job in made)
    # No worker holds the ones in a worker's states.
    held = Job.objects.filter(state__in=["PROCESSING", "STOPPING"])
    assert list(held.values_list("claimed_by", "lease_until")) == [(None, None)] * 2
    assert_replay_equals_live()


def test_a_cancelled_job_cannot_be_created_and_nothing_is_written():
    with pytest.raises(InvalidJobError, match=r"cannot be created in state 'CANCELLED'.*cancel"):
        Job.objects.create(name="testjob", state=Job.STATES.CANCELLED)
    assert JobEvent.objects.count() == 0


def test_a_job_created_processing_goes_back_to_its_queue_when_leases_expire():
    job = Job.objects.create(name="testjob", state=Job.STATES.PROCESSING)
    assert Job.get_queue_depths() == {}

    assert [expiry.job_id for expiry in expire_leases("compat")] == [job.pk]

    job.refresh_from_db()
    assert (job.state, job.attempts) == ("READY", 0)
    assert kinds(job) == [("created",), ("lease_expired",)]
    assert Job.get_queue_depths() == {"default": 1}
    assert_replay_equals_live()


def test_get_queue_depths__counts_waiting_jobs_per_queue():
    Job.objects.create(name="testjob", queue_name="default")
    Job.objects.create(name="testjob", queue_name="testworker")
    Job.objects.create(name="testjob", queue_name="testworker", run_after=later())
    Job.objects.create(name="testjob", queue_name="testworker", state=Job.STATES.FAILED)
    Job.objects.create(name="testjob", queue_name="testworker", state=Job.STATES.COMPLETE)
    Job.objects.create(name="testjob", queue_name="testworker", state=Job.STATES.PROCESSING)

    assert Job.get_queue_depths() == {"default": 1, "testworker": 2}
    assert Job.get_queue_depths(exclude_future_jobs=True) == {"default": 1, "testworker": 1}


def fill_queues():
    for state in ("FAILED", "NEW", "FAILED", "COMPLETE"):
        Job.objects.create(name="testjob", state=state)
    Job.objects.create(name="testjob", state=Job.STATES.READY, run_after=later())
    Job.objects.create(name="testjob", queue_name="testqueue", state=Job.STATES.READY)
    Job.objects.create(name="testjob", queue_name="testqueue", state=Job.STATES.READY)


@pytest.mark.parametrize(
    ("options", "printed"),
    [
        ({}, "event=queue_depths default=2"),
        ({"exclude_future_jobs": True}, "event=queue_depths default=1"),
        ({"queue_name": ("default", "testqueue")}, "event=queue_depths default=2 testqueue=2"),
        ({"queue_name": ("otherqueue",)}, "event=queue_depths otherqueue=0"),
    ],
)
def test_queue_depth_command__prints_what_3_3_printed(options, printed):
    fill_queues()
    out = StringIO()
    call_command("queue_depth", stdout=out, **options)
    assert out.getvalue().strip() == printed


def test_a_new_job_has_3_3s_defaults():
    job = Job(name="testjob", queue_name="lol")
    assert (job.state, job.queue_name, job.priority, job.run_after) == ("NEW", "lol", 0, None)


@pytest.mark.parametrize("state", [Job.STATES.READY, Job.STATES.NEW])
def test_get_ready_or_none__takes_the_oldest_waiting_job_once_created_was_saved(state):
    with transaction.atomic():
        assert Job.objects.get_ready_or_none("default") is None
    Job.objects.create(name="testjob", state=state)
    Job.objects.create(name="testjob", state=Job.STATES.PROCESSING)
    expected = aged(Job.objects.create(name="testjob", state=state), timedelta(minutes=1))

    with transaction.atomic():
        assert Job.objects.get_ready_or_none("default") == expected
    assert kinds(expected) == [("created",), ("updated",)]
    assert JobEvent.objects.get(job_id=expected.pk, version=2).payload == {
        "created": expected.created.isoformat()
    }
    assert_replay_equals_live()


@pytest.mark.parametrize(
    ("priorities", "first"),
    [((0, 3, 2), 1), ((0, -2, 1), 2), ((3, 3, 3), 0)],
)
def test_to_process__orders_by_priority_then_age_and_leaves_out_running_jobs(priorities, first):
    made = [Job.objects.create(name="testjob", priority=p) for p in priorities]
    running = Job.objects.create(name="testjob", state=Job.STATES.PROCESSING, priority=9)

    with transaction.atomic():
        assert set(Job.objects.to_process("default")) == set(made)
        assert Job.objects.get_ready_or_none("default") == made[first]
        assert not Job.objects.to_process("default").filter(id=running.id).exists()


def test_to_process__leaves_out_jobs_until_their_run_after():
    now_job = Job.objects.create(name="testjob")
    Job.objects.create(name="testjob", run_after=later())
    with transaction.atomic():
        assert set(Job.objects.to_process("default")) == {now_job}
    due = Job.objects.create(name="testjob", run_after=timezone.now() - timedelta(hours=1))
    with transaction.atomic():
        assert set(Job.objects.to_process("default")) == {now_job, due}


def test_update_next_task__walks_the_tasks_in_memory():
    job = Job.objects.create(name="twotasks")
    assert job.next_task == "tests.jobs.task_one"
    job.update_next_task()
    assert job.next_task == "tests.jobs.task_two"
    job.update_next_task()
    assert job.next_task == ""
    assert kinds(job) == [("created",)]


def test_the_creation_hook_runs_on_create_only():
    job = Job.objects.create(name="hooked")
    job = Job.objects.get()
    assert job.workspace["hooked"] is True
    job.workspace["hooked"] = "changed"
    job.save()
    assert Job.objects.get().workspace["hooked"] == "changed"
    assert kinds(job) == [("created",), ("updated",)]


def test_delete_old__removes_what_3_3_removed():
    two_days = timedelta(days=2)
    old = {
        state: aged(Job.objects.create(name="testjob", state=state), two_days)
        for state in ("COMPLETE", "FAILED", "STOPPING", "NEW")
    }
    fresh = Job.objects.create(name="testjob", state=Job.STATES.COMPLETE)

    assert Job.objects.delete_old() == 3

    assert set(Job.objects.all()) == {old["NEW"], fresh}
    assert JobEvent.objects.filter(job_id=old["COMPLETE"].pk).count() == 0
    assert kinds(old["NEW"]) == [("created",), ("updated",)]
    assert_replay_equals_live()


def test_delete_old__with_hours():
    five = aged(Job.objects.create(name="testjob", state="COMPLETE"), timedelta(days=5))
    three = aged(Job.objects.create(name="testjob", state="COMPLETE"), timedelta(days=3))

    assert Job.objects.delete_old(hours=24 * 4) == 1

    assert list(Job.objects.all()) == [three]
    assert not JobEvent.objects.filter(job_id=five.pk).exists()


def test_saved_created__is_history_that_replay_and_as_of_honour():
    job = Job.objects.create(name="testjob")
    enqueued = job.created
    aged(job, timedelta(days=3))
    assert Job.objects.get(pk=job.pk).created == job.created

    at_update = JobEvent.objects.get(job_id=job.pk, version=2).at
    (before,) = Job.objects.filter(pk=job.pk).as_of(at_update - timedelta(microseconds=1))
    assert before.created == enqueued
    (after,) = Job.objects.filter(pk=job.pk).as_of(at_update)
    assert after.created == job.created
    assert_replay_equals_live()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "must be a datetime, not NoneType"),
        ("2020-01-01", "must be a datetime, not str"),
        (datetime(2020, 1, 1), "naive datetime while USE_TZ"),
    ],
)
def test_saving_a_bad_created__is_refused_and_nothing_is_written(value, message):
    job = Job.objects.create(name="testjob")
    job.created = value
    with pytest.raises(InvalidJobError, match=message):
        job.save()
    assert kinds(job) == [("created",)]


def test_a_job_created_stopping_is_aged_and_saved_by_the_app():
    job = Job.objects.create(name="testjob", state=Job.STATES.STOPPING)
    aged(job, timedelta(days=2))
    job.priority = 4
    job.save(update_fields=["priority"])

    stored = Job.objects.get(pk=job.pk)
    assert (stored.state, stored.priority, stored.created) == ("STOPPING", 4, job.created)
    assert kinds(job) == [("created",), ("updated",), ("updated",)]
    assert_replay_equals_live()


def test_delete_old_jobs_command__prints_3_3s_line():
    aged(Job.objects.create(name="testjob", state="FAILED"), timedelta(days=2))
    out = StringIO()
    call_command("delete_old_jobs", stdout=out)
    assert out.getvalue() == "Deleted old jobs\n"
    assert Job.objects.count() == 0


def test_3_3s_module_names_are_there():
    from django_dbq import models, tasks
    from django_dbq.management.commands import worker

    assert models.DEFAULT_DELETE_JOBS_AFTER_HOURS == 24
    assert isinstance(Job.objects, models.JobManager)
    assert (tasks.TASK_LIST_KEY, tasks.CREATION_HOOK_KEY) == ("tasks", "creation_hook")
    assert tasks.get_next_task_name("twotasks") == "tests.jobs.task_one"
    assert tasks.get_next_task_name("twotasks", "tests.jobs.task_one") == "tests.jobs.task_two"
    assert tasks.get_next_task_name("twotasks", "tests.jobs.task_two") is None
    assert tasks.get_creation_hook_name("hooked") == "tests.jobs.creation_hook"
    assert worker.DEFAULT_QUEUE_NAME == "default"
    assert worker.sleep is time.sleep
