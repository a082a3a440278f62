"""The commands as django-db-queue 3.3's users and the previous release's call them."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from django_dbq.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


def depth(*args):
    out = StringIO()
    call_command("queue_depth", *args, stdout=out)
    return out.getvalue().strip()


def test_queue_depth__the_flag_before_queue_names_keeps_every_name():
    Job.objects.create(name="testjob", queue_name="q1")
    Job.objects.create(name="testjob", queue_name="q2")
    assert depth("q1", "q2", "--exclude_future_jobs") == "event=queue_depths q1=1 q2=1"
    assert depth("--exclude_future_jobs", "q1", "q2") == "event=queue_depths q1=1 q2=1"


def test_queue_depth__the_flag_before_one_queue_name_counts_that_queue():
    Job.objects.create(name="testjob", queue_name="q1")
    assert depth("--exclude_future_jobs", "q1") == "event=queue_depths q1=1"


@pytest.mark.parametrize(("given", "shown"), [("1", "1"), ("3600", "3600"), ("0.5", "0.5")])
def test_worker_dry_run__prints_3_3s_line(given, shown):
    out = StringIO()
    call_command("worker", "--rate_limit", given, "--dry-run", stdout=out)
    assert out.getvalue() == (
        f'Starting job worker for queue "default" with rate limit of one job per {shown} second(s)\n'
    )


def test_delete_old_jobs__prints_3_3s_line_and_the_count_with_verbosity_2():
    out = StringIO()
    call_command("delete_old_jobs", stdout=out)
    assert out.getvalue() == "Deleted old jobs\n"
    out = StringIO()
    call_command("delete_old_jobs", verbosity=2, stdout=out)
    assert out.getvalue() == "Deleted old jobs (0)\n"


@pytest.mark.parametrize("given", ["nan", "inf", "-1"])
def test_worker__a_rate_limit_that_is_no_number_of_seconds_is_refused(given):
    """`inf` would make the worker wait forever after its first job; NaN and negatives make no sense."""
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("worker", "--rate_limit", given, "--dry-run", stdout=StringIO())
