"""How the create statement reaches the server: parameters bound server-side, so
that it can be prepared where the database's OPTIONS allow it, with Django's error
translation and query logging kept."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from django_dbq.models import Job


@pytest.fixture
def prepare_threshold(transactional_db):
    """Reconnect with OPTIONS["prepare_threshold"] set, as a user would in settings."""
    options = connection.settings_dict["OPTIONS"]

    def _set(value):
        connection.close()
        options["prepare_threshold"] = value

    yield _set
    connection.close()
    options.pop("prepare_threshold", None)


def prepared_inserts():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%%dbq_create_job%%'"
        )
        return cursor.fetchone()[0]


def test_create__is_prepared_when_the_database_options_allow_it(prepare_threshold):
    prepare_threshold(2)

    for _ in range(3):
        Job.objects.create(name="testjob")
        Job.objects.bulk_create([Job(name="testjob"), Job(name="testjob")])

    # One statement for a single job, one for several.
    assert prepared_inserts() == 2
    assert Job.objects.count() == 9


def test_create__prepares_nothing_with_djangos_default_options(transactional_db):
    for _ in range(10):
        Job.objects.create(name="testjob")

    assert prepared_inserts() == 0


def test_create__is_logged_and_its_errors_are_djangos(db):
    with CaptureQueriesContext(connection) as queries:
        job = Job.objects.create(name="testjob")
    assert ["dbq_create_job_v2" in q["sql"] for q in queries] == [True]

    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.create(id=job.pk, name="testjob")
    assert Job.objects.count() == 1
