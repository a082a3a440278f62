"""Reads that may leave the primary, and counts that do not read history (issue 14).

job_history, dbq_stats, queue_depth and the admin's pages read from the database
Django's routers name for reads (db_for_read); here a second connection to the
test database that may only read, as a hot standby would. as_of and verify need
TEMP tables, which such a server refuses: they say so.
"""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import orjson
import pytest
from django.core.management import call_command
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_dbq.exceptions import DbqError
from django_dbq.models import Job
from django_dbq.projections import stats

REPLICA = "replica"


class ReadFromReplica:
    """Reads of django_dbq's models from the replica, writes to the primary."""

    def db_for_read(self, model, **hints):
        return REPLICA if model._meta.app_label == "django_dbq" else None

    def db_for_write(self, model, **hints):
        return "default"

    def allow_relation(self, *args, **hints):
        return True


@pytest.fixture
def replica(settings):
    config = dict(connections["default"].settings_dict)
    options = dict(config.get("OPTIONS") or {})
    options["options"] = "-c default_transaction_read_only=on"
    config["OPTIONS"] = options
    connections.settings[REPLICA] = config
    settings.DATABASE_ROUTERS = [f"{__name__}.ReadFromReplica"]
    # Connected here: the test case allows queries on the aliases it knew of when
    # it started, and on connections already open.
    connections[REPLICA].connect()
    yield connections[REPLICA]
    connections[REPLICA].close()
    del connections[REPLICA]
    del connections.settings[REPLICA]


def run(*args):
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_history_stats_and_depths__read_from_the_database_for_reads(replica):
    job = Job.objects.create(name="testjob")
    Job.objects.create(name="testjob", state="FAILED", queue_name="other")

    with CaptureQueriesContext(connection) as primary, CaptureQueriesContext(replica) as read:
        history = run("job_history", str(job.pk))
        data = orjson.loads(run("dbq_stats", "--json"))
        depths = run("queue_depth")
        assert Job.get_queue_depths() == {"default": 1}

    assert "created" in history
    assert data["queues"]["default"]["states"] == {"NEW": 1}
    assert data["queues"]["other"]["states"] == {"FAILED": 1}
    assert "default" in depths
    assert read.captured_queries and not primary.captured_queries, primary.captured_queries


@pytest.mark.django_db(transaction=True)
def test_admin__job_list_and_timeline_read_from_the_database_for_reads(replica, admin_client):
    job = Job.objects.create(name="testjob")

    with CaptureQueriesContext(replica) as read:
        listing = admin_client.get(reverse("admin:django_dbq_job_changelist"))
        page = admin_client.get(reverse("admin:django_dbq_job_change", args=[job.pk]))

    assert listing.status_code == 200 and page.status_code == 200
    assert "created" in page.content.decode()
    events = [q["sql"] for q in read.captured_queries if "django_dbq_jobevent" in q["sql"]]
    assert events, read.captured_queries


@pytest.mark.django_db(transaction=True)
def test_as_of__on_a_read_only_database_says_what_it_needs(replica):
    job = Job.objects.create(name="testjob")

    with pytest.raises(DbqError, match="read-only .*TEMP tables.* primary or a logical replica"):
        Job.objects.filter(pk=job.pk).as_of(timezone.now())
    # On the primary, as the caller chooses.
    (then,) = Job.objects.using("default").filter(pk=job.pk).as_of(timezone.now())
    assert then.state == "NEW"


@pytest.mark.django_db
def test_dbq_stats__estimates_finished_jobs_of_a_large_projection_and_counts_live_ones(
    monkeypatch,
):
    monkeypatch.setattr(stats, "SAMPLE_PAGES", 200)
    Job.objects.bulk_create([Job(name="testjob", state="COMPLETE") for _ in range(20_000)])
    Job.objects.bulk_create([Job(name="testjob", run_after=timezone.now() + timedelta(days=1))])
    Job.objects.bulk_create([Job(name="testjob") for _ in range(7)])
    # A single failed job elsewhere: counted exactly, whatever the sample.
    Job.objects.create(name="testjob", state="FAILED", queue_name="rare")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE django_dbq_job")

    queues = orjson.loads(run("dbq_stats", "--json"))["queues"]
    data = queues["default"]
    table = run("dbq_stats")

    assert data["states"]["NEW"] == 8  # exactly
    assert data["estimated"] == ["COMPLETE"]
    assert 14_000 < data["states"]["COMPLETE"] < 26_000
    assert queues["rare"]["states"]["FAILED"] == 1
    assert queues["rare"]["estimated"] == ["COMPLETE"]  # shown as ~0
    assert "~" in table and "COMPLETE estimated from 200 pages" in table
    rare = next(line.split() for line in table.splitlines() if line.startswith("rare "))
    assert rare[5:7] == ["1", "~0"]  # FAILED, COMPLETE
