"""Saving `created` from Python: USE_TZ on and off, from a task, from a failure hook, with
update_fields."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from django_dbq.models import Job
from django_dbq.projections.replay import verify_projection
from django_dbq.worker import Worker

pytestmark = pytest.mark.django_db(transaction=True)
TWO_DAYS = timedelta(days=2)


def ages_its_job(job):
    job.created = job.created - TWO_DAYS
    job.save()


def fails(job):
    raise ValueError("on purpose")


def ages_in_failure_hook(job, exception):
    job.created = job.created - TWO_DAYS
    job.workspace["hook"] = True


def kinds(job):
    return list(job.events.values_list("kind", flat=True))


def replay_ok():
    result = verify_projection()
    assert result.ok, [d.describe() for d in result.drift]


@pytest.fixture(autouse=True)
def jobs(settings):
    settings.JOBS = {
        **settings.JOBS,
        "ages": ["tests.test_created_saves.ages_its_job"],
        "ages_on_failure": {
            "tasks": ["tests.test_created_saves.fails"],
            "failure_hook": "tests.test_created_saves.ages_in_failure_hook",
        },
    }


def test_update_fields_created_saves_only_created():
    job = Job.objects.create(name="testjob")
    job.created -= TWO_DAYS
    job.priority = 5
    job.save(update_fields=["created"])
    stored = Job.objects.get(pk=job.pk)
    assert (stored.created, stored.priority) == (job.created, 0)
    assert kinds(job) == ["created", "updated"]
    replay_ok()


def test_an_unchanged_created_is_not_saved_again():
    job = Job.objects.create(name="testjob")
    job.save()
    Job.objects.get(pk=job.pk).save()
    Job.objects.bulk_create([Job(name="testjob")])[0].save()
    assert kinds(job) == ["created"]


def test_naive_created_without_use_tz_is_the_current_time_zone(settings):
    settings.USE_TZ = False
    job = Job.objects.create(name="testjob")
    job.created = datetime(2020, 1, 1, 12, 0)
    job.save()
    assert Job.objects.get(pk=job.pk).created == datetime(2020, 1, 1, 12, 0)
    replay_ok()


def test_a_task_ages_its_job_through_the_workers_key():
    job = Job.objects.create(name="ages")
    enqueued = job.created
    Worker("default", burst=True, handle_signals=False).run()
    stored = Job.objects.get(pk=job.pk)
    assert stored.state == "COMPLETE"
    assert abs(stored.created - (enqueued - TWO_DAYS)) < timedelta(milliseconds=1)
    assert kinds(job) == ["created", "claimed", "updated", "completed"]
    replay_ok()


def test_a_failure_hook_ages_the_failed_job_through_save_failed():
    job = Job.objects.create(name="ages_on_failure")
    enqueued = job.created
    Worker("default", burst=True, handle_signals=False).run()
    stored = Job.objects.get(pk=job.pk)
    assert (stored.state, stored.workspace.get("hook")) == ("FAILED", True)
    assert abs(stored.created - (enqueued - TWO_DAYS)) < timedelta(milliseconds=1)
    assert kinds(job) == ["created", "claimed", "failed", "updated"]
    assert timezone.now() - stored.modified < timedelta(minutes=1)
    replay_ok()
