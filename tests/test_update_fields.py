"""save(update_fields=[...]) saves those fields and leaves the other changes for the next save."""

from __future__ import annotations

from datetime import timedelta

import pytest

from django_dbq.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("first", ["created", "priority", "queue_name"])
def test_a_change_left_out_of_update_fields_is_saved_by_the_next_save(first):
    job = Job.objects.create(name="testjob")
    job.created -= timedelta(days=2)
    job.priority = 5
    job.queue_name = "other"
    job.workspace["kept"] = True
    job.save(update_fields=[first])
    job.save()  # everything else
    stored = Job.objects.get(pk=job.pk)
    assert (stored.created, stored.priority, stored.queue_name, stored.workspace) == (
        job.created,
        5,
        "other",
        {"kept": True},
    )
