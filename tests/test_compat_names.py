"""django-db-queue 3.3's manager and model methods that custom loops and tests call."""

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from django_dbq.models import Job
from tests import jobs as test_jobs

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def clear_calls():
    test_jobs.CALLS.clear()


def test_to_process__the_jobs_ready_now_in_a_queue_in_claim_order():
    old = Job.objects.create(name="testjob")
    urgent = Job.objects.create(name="testjob", priority=5)
    Job.objects.create(name="testjob", run_after=timezone.now() + timedelta(hours=1))
    Job.objects.create(name="testjob", queue_name="other")
    done = Job.objects.create(name="testjob")
    done.state = Job.STATES.COMPLETE
    done.save()

    with transaction.atomic():
        ready = list(Job.objects.to_process("default"))

    assert [job.pk for job in ready] == [urgent.pk, old.pk]


def test_get_ready_or_none__the_first_ready_job_or_none():
    with transaction.atomic():
        assert Job.objects.get_ready_or_none("default") is None
    job = Job.objects.create(name="testjob")
    with transaction.atomic():
        assert Job.objects.get_ready_or_none("default", max_retries=1) == job


def test_task_and_hook_methods__call_what_settings_jobs_names():
    job = Job.objects.create(name="hooks", workspace={"tag": "m"})

    assert job.get_pre_task_hook_name() == "tests.jobs.pre_task_hook"
    assert job.get_post_task_hook_name() == "tests.jobs.post_task_hook"
    job.run_pre_task_hook()
    job.run_next_task()
    job.run_failure_hook(ValueError("x"))
    job.run_post_task_hook()

    assert test_jobs.CALLS == [
        ("pre", "m"),
        ("task", "m"),
        ("failure", "m", "ValueError"),
        ("post", "m"),
    ]


def test_hook_methods__do_nothing_for_a_job_without_hooks():
    job = Job.objects.create(name="testjob")

    job.run_pre_task_hook()
    job.run_post_task_hook()
    job.run_failure_hook(ValueError("x"))

    assert job.get_pre_task_hook_name() is None and test_jobs.CALLS == []


@pytest.mark.django_db(transaction=True)
def test_delete_old__removes_old_stopping_jobs_no_worker_holds_as_3_3_did():
    import time

    from django_dbq.events.claims import append_held, claim_jobs, new_worker_key

    abandoned, running = Job.objects.create(name="testjob"), Job.objects.create(name="testjob")
    for job, lease in ((abandoned, 1), (running, 30)):
        key = new_worker_key()
        claim_jobs("default", 1, "w", key, "h", 1, lease)
        assert append_held(key, [(job.pk, "stopping", "{}")]) == {job.pk}
    time.sleep(1.05)

    assert Job.objects.delete_old(hours=-1) == 1

    assert list(Job.objects.values_list("pk", flat=True)) == [running.pk]
    assert not abandoned.events.exists()
