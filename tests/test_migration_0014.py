"""Migration 0014 (unique jobs) back to 0013 and forward again, with jobs that hold keys."""

from __future__ import annotations

import pytest

from tests import scratch_roles as rv


@pytest.fixture
def migrated():
    db = rv.create("m14")
    yield db
    rv.drop(db)


def migrate(db, *target):
    done = db.manage("owner", "migrate", *target, "--verbosity", "0")
    assert done.returncode == 0, done.stderr[-2000:]


CREATE = (
    "from django_dbq.models import Job;"
    "Job.objects.create(name='testjob', unique_key='invoice-42');"
    "Job.objects.bulk_create([Job(name='testjob', unique_key='b'), Job(name='testjob')])"
)
DUPLICATE = (
    "from django_dbq.models import Job;"
    "from django_dbq.exceptions import DuplicateJobError\n"
    "try:\n"
    "    Job.objects.create(name='testjob', unique_key='invoice-42')\n"
    "except DuplicateJobError as error:\n"
    "    print('duplicate of', error.job.pk)"
)


def test_back_to_0013_and_forward__keeps_each_key_and_its_rule(migrated):
    made = migrated.manage("app", "shell", "-c", CREATE)
    assert made.returncode == 0, made.stderr[-2000:]

    migrate(migrated, "django_dbq", "0013")
    assert migrated.manage("owner", "replay_events", "--verify").returncode == 0
    migrate(migrated)

    with migrated.connect("owner") as owner:
        keys = owner.execute(
            "SELECT unique_key FROM django_dbq_job WHERE unique_key IS NOT NULL ORDER BY 1"
        ).fetchall()
    assert keys == [("b",), ("invoice-42",)]
    verified = migrated.manage("owner", "replay_events", "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr[-2000:]
    again = migrated.manage("app", "shell", "-c", DUPLICATE)
    assert "duplicate of" in again.stdout, again.stderr[-2000:]


REUSED = (
    "from django_dbq.models import Job;"
    "Job.objects.create(name='testjob', unique_key='k').cancel();"
    "Job.objects.create(name='testjob', unique_key='k')"
)


def test_forward_again__with_a_key_that_a_finished_job_held_before(migrated):
    made = migrated.manage("app", "shell", "-c", REUSED)
    assert made.returncode == 0, made.stderr[-2000:]

    migrate(migrated, "django_dbq", "0013")
    migrate(migrated)

    with migrated.connect("owner") as owner:
        states = owner.execute(
            "SELECT state FROM django_dbq_job WHERE unique_key = 'k' ORDER BY created"
        ).fetchall()
    assert states == [("CANCELLED",), ("NEW",)]


SECOND_LIVE = (
    "from django_dbq.models import Job;"
    "job = Job.objects.create(name='testjob', unique_key='k');"
    "job.cancel()"
)


def test_forward_again__names_jobs_that_came_to_share_a_key_meanwhile(migrated):
    made = migrated.manage("app", "shell", "-c", SECOND_LIVE)
    assert made.returncode == 0, made.stderr[-2000:]
    made = migrated.manage(
        "app",
        "shell",
        "-c",
        "from django_dbq.models import Job; Job.objects.create(name='testjob', unique_key='k')",
    )
    assert made.returncode == 0, made.stderr[-2000:]
    migrate(migrated, "django_dbq", "0013")
    # At 0013 nothing holds keys: the cancelled job comes back beside the other.
    requeued = migrated.manage(
        "app",
        "shell",
        "-c",
        "from django_dbq.models import Job; Job.objects.filter(state='CANCELLED').requeue()",
    )
    assert requeued.returncode == 0, requeued.stderr[-2000:]

    forward = migrated.manage("owner", "migrate", "--verbosity", "0")

    assert forward.returncode != 0
    assert "share a unique key" in forward.stderr and "'k'" in forward.stderr, forward.stderr[
        -2000:
    ]
