"""Time-ordered job ids (migration 0020): version 7 UUIDs, later jobs sort later."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest

from django_dbq.ids import uuid7
from django_dbq.models import Job


@pytest.mark.django_db
def test_job_ids__are_version_7_in_creation_order_whichever_way_jobs_are_made():
    first = Job.objects.create(name="testjob")
    time.sleep(0.002)
    batch = Job.objects.bulk_create([Job(name="testjob") for _ in range(3)])
    time.sleep(0.002)
    last = Job(name="testjob")
    last.save()

    ids = [first.pk, *(job.pk for job in batch), last.pk]
    assert {i.version for i in ids} == {7}
    assert ids[0] < min(ids[1:4]) and max(ids[1:4]) < ids[4]
    # The stored rows are the ones made.
    assert list(Job.objects.order_by("id").values_list("id", flat=True)) == sorted(ids)


def test_uuid7__carries_the_time_in_milliseconds_and_random_bits():
    before = int(time.time() * 1000)
    ids = [uuid7() for _ in range(10000)]
    after = int(time.time() * 1000)

    assert len(set(ids)) == 10000
    assert all(i.variant == uuid.RFC_4122 and i.version == 7 for i in ids)
    assert all(before <= i.int >> 80 <= after for i in ids)
    when = datetime.fromtimestamp((ids[0].int >> 80) / 1000, UTC)
    assert abs((datetime.now(UTC) - when).total_seconds()) < 5


@pytest.mark.django_db
def test_job_ids__a_version_4_id_given_by_the_caller_is_kept():
    given = uuid.uuid4()
    assert Job.objects.create(id=given, name="testjob").pk == given
    assert Job.objects.get(pk=given).name == "testjob"


def test_uuid7__ids_made_one_after_another_grow_within_a_millisecond():
    # A bulk_create's jobs, in the order of the list: their index entries go in order.
    jobs = [Job(name="testjob") for _ in range(1000)]
    ids = [job.pk for job in jobs]

    assert ids == sorted(ids) and len(set(ids)) == 1000
    assert (ids[-1].int >> 80) - (ids[0].int >> 80) < 50  # milliseconds, not an id each
