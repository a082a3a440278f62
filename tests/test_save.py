from datetime import timedelta

import pytest
from django.utils import timezone

from django_dbq.exceptions import InvalidJobError, ProjectionWriteError
from django_dbq.models import Job
from tests.factories import JobFactory

pytestmark = pytest.mark.django_db


def test_save__appends_an_updated_event_with_only_the_changed_fields():
    job = JobFactory(workspace={"a": 1})
    job = Job.objects.get(pk=job.pk)
    job.priority = 5
    job.workspace["b"] = 2
    job.save()

    event = job.events.last()
    assert (event.version, event.kind) == (2, "updated")
    assert event.payload == {"priority": 5, "workspace": {"a": 1, "b": 2}}
    stored = Job.objects.get(pk=job.pk)
    assert (stored.priority, stored.workspace, stored.version) == (5, {"a": 1, "b": 2}, 2)
    assert job.version == 2 and job.modified == stored.modified


def test_save__without_changes_appends_nothing():
    job = JobFactory()
    Job.objects.get(pk=job.pk).save()
    job.save()

    assert job.events.count() == 1


def test_save__with_update_fields_records_only_those():
    job = Job.objects.get(pk=JobFactory().pk)
    job.priority = 3
    job.queue_name = "other"
    job.save(update_fields=["queue_name"])

    assert job.events.last().payload == {"queue_name": "other"}
    assert Job.objects.get(pk=job.pk).priority == 0


def test_save__run_after_round_trips_through_the_ledger():
    when = timezone.now() + timedelta(hours=1)
    job = JobFactory()
    job.run_after = when
    job.save()

    assert Job.objects.get(pk=job.pk).run_after == when


def test_save__moves_a_failed_job_back_to_ready():
    job = JobFactory(state=Job.STATES.FAILED)
    job.state = Job.STATES.READY
    job.save()

    assert Job.objects.get(pk=job.pk).state == Job.STATES.READY


def test_save__cannot_put_a_job_into_a_worker_state():
    job = JobFactory()
    job.state = Job.STATES.PROCESSING

    with pytest.raises(InvalidJobError, match="only a worker"):
        job.save()
    assert job.events.count() == 1


def test_save__bad_values_are_refused_before_anything_is_written():
    job = JobFactory()
    job.priority = 99999

    with pytest.raises(InvalidJobError, match="out of range"):
        job.save()
    assert Job.objects.get(pk=job.pk).priority == 0


def test_save__two_copies_of_a_job_do_not_collide():
    first = Job.objects.get(pk=JobFactory().pk)
    second = Job.objects.get(pk=first.pk)
    first.priority = 1
    first.save()
    second.queue_name = "other"
    second.save()

    stored = Job.objects.get(pk=first.pk)
    assert (stored.priority, stored.queue_name, stored.version) == (1, "other", 3)


def test_refresh_from_db__forgets_local_changes():
    job = JobFactory()
    job.priority = 4
    job.refresh_from_db()
    job.save()

    assert job.events.count() == 1


@pytest.mark.parametrize(
    "write",
    [
        lambda: Job.objects.update(priority=1),
        lambda: Job.objects.filter(name="testjob").delete(),
        lambda: Job.objects.all().bulk_update(list(Job.objects.all()), ["priority"]),
        lambda: Job.objects.get().delete(),
    ],
)
def test_orm_writes_that_bypass_the_ledger_fail_clearly(write):
    JobFactory()

    with pytest.raises(ProjectionWriteError, match="projection of the job ledger"):
        write()
    assert Job.objects.get().version == 1
