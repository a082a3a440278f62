from datetime import timedelta
from io import StringIO

import orjson
import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from django_dbq.events.append import append_events
from django_dbq.models import Job, JobEvent
from tests.factories import JobFactory

pytestmark = pytest.mark.django_db


def run(*args):
    stdout = StringIO()
    call_command(*args, stdout=stdout)
    return stdout.getvalue().strip()


def make_queue_jobs():
    for state in ["FAILED", "NEW", "FAILED", "COMPLETE", "READY"]:
        JobFactory(state=state)
    JobFactory(queue_name="testqueue", state="READY")
    JobFactory(queue_name="testqueue", state="READY")


def test_queue_depth__prints_the_default_queue():
    make_queue_jobs()

    assert run("queue_depth") == "event=queue_depths default=2"


def test_queue_depth__prints_each_queue_asked_for_with_zero_for_unknown():
    make_queue_jobs()

    assert run("queue_depth", "default", "testqueue", "other") == (
        "event=queue_depths default=2 testqueue=2 other=0"
    )


def test_queue_depth__can_leave_out_future_jobs():
    JobFactory()
    JobFactory(run_after=timezone.now() + timedelta(hours=1))
    JobFactory(run_after=timezone.now() - timedelta(hours=1))

    assert run("queue_depth") == "event=queue_depths default=3"
    assert run("queue_depth", "--exclude_future_jobs") == "event=queue_depths default=2"
    # django-db-queue's flag took a value.
    assert run("queue_depth", "--exclude_future_jobs", "True") == "event=queue_depths default=2"
    assert run("queue_depth", "--exclude_future_jobs", "false") == "event=queue_depths default=3"
    # Queue names after the flag are queue names, as they were with the bare flag.
    JobFactory(queue_name="q1")
    JobFactory(queue_name="q2", run_after=timezone.now() + timedelta(hours=1))
    assert run("queue_depth", "--exclude_future_jobs", "q1", "q2") == "event=queue_depths q1=1 q2=0"
    assert run("queue_depth", "--exclude_future_jobs", "q2") == "event=queue_depths q2=0"
    assert run("queue_depth", "q2", "--exclude_future_jobs") == "event=queue_depths q2=0"


def test_get_queue_depths__counts_waiting_jobs_per_queue():
    make_queue_jobs()
    JobFactory(queue_name="later", run_after=timezone.now() + timedelta(days=1))

    assert Job.get_queue_depths() == {"default": 2, "testqueue": 2, "later": 1}
    assert Job.get_queue_depths(exclude_future_jobs=True) == {"default": 2, "testqueue": 2}


def test_delete_old_jobs__removes_old_finished_jobs_with_their_history(count_rows):
    done = JobFactory(state="COMPLETE")
    failed = JobFactory(state="FAILED")
    waiting = JobFactory()
    running = JobFactory()
    append_events([(running.id, "claimed", orjson.dumps({"worker": "w"}).decode())])
    recent = JobFactory(state="COMPLETE")

    # A negative age puts the cutoff an hour ahead, so every job counts as old.
    assert run("delete_old_jobs", "--hours", "-1", "-v", "2") == "Deleted old jobs (3)"
    assert set(Job.objects.values_list("id", flat=True)) == {waiting.id, running.id}
    assert not JobEvent.objects.filter(job_id__in=[done.id, failed.id, recent.id]).exists()
    assert count_rows("django_dbq_jobevent") == 3


def test_delete_old_jobs__keeps_jobs_younger_than_the_cutoff():
    JobFactory(state="COMPLETE")

    assert run("delete_old_jobs") == "Deleted old jobs"
    assert run("delete_old_jobs", "--hours", "1", "--verbosity", "2") == "Deleted old jobs (0)"
    assert Job.objects.count() == 1


def test_delete_old__is_available_on_the_manager():
    JobFactory(state="FAILED")

    assert Job.objects.delete_old(hours=-1) == 1


def test_job_history__prints_the_timeline():
    job = JobFactory(name="twotasks")
    payloads = [
        ("claimed", {"worker": "host:123:w1", "pid": 123}),
        (
            "task_done",
            {
                "task": "tests.jobs.task_one",
                "next_task": "tests.jobs.task_two",
                "workspace": {},
                "duration": 0.0421,
            },
        ),
        ("claimed", {"worker": "host:124:w2"}),
        (
            "failed",
            {
                "task": "tests.jobs.task_two",
                "workspace": {},
                "duration": 1.5,
                "error": {"type": "ValueError", "message": "bad cat", "traceback": "..."},
            },
        ),
    ]
    for kind, payload in payloads:
        append_events([(job.id, kind, orjson.dumps(payload).decode())])

    lines = run("job_history", str(job.id)).splitlines()

    assert lines[0].split() == ["time", "version", "event", "worker", "task", "duration", "error"]
    assert len(lines) == 6
    assert lines[1].split()[1:4] == ["1", "created", "tests.jobs.task_one"]
    assert "task_done" in lines[3] and "tests.jobs.task_one" in lines[3] and "0.042s" in lines[3]
    assert "host:124:w2" in lines[4]
    assert "1.500s" in lines[5] and lines[5].endswith("ValueError: bad cat")


def test_job_history__unknown_or_malformed_id_is_a_clear_error():
    with pytest.raises(CommandError, match="not a job id"):
        run("job_history", "nope")
    with pytest.raises(CommandError, match="No events for job"):
        run("job_history", "00000000-0000-0000-0000-000000000000")


@pytest.mark.django_db(transaction=True)
def test_dbq_stats__counts_per_queue_and_state_waiting_age_and_throughput():
    from django_dbq.worker import Worker

    Job.objects.bulk_create([Job(name="testjob") for _ in range(3)])
    Job.objects.create(name="testjob", queue_name="other")
    Job.objects.create(name="testjob", state="FAILED", queue_name="other")
    Worker("default", burst=True, handle_signals=False).run()

    table = run("dbq_stats").splitlines()
    data = orjson.loads(run("dbq_stats", "--json"))

    assert table[0].split()[:4] == ["queue", "NEW", "READY", "PROCESSING"]
    assert data["window_minutes"] == 5
    assert data["queues"]["default"]["states"] == {"COMPLETE": 3}
    assert data["queues"]["default"]["completed_per_minute"] == 0.6
    assert data["queues"]["default"]["oldest_waiting_seconds"] is None
    assert data["queues"]["other"]["states"] == {"NEW": 1, "FAILED": 1}
    assert data["queues"]["other"]["oldest_waiting_seconds"] >= 0
    assert any(line.startswith("other ") for line in table)


@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_worker__refuses_a_rate_limit_that_is_not_a_finite_number_of_seconds(value):
    with pytest.raises(CommandError, match="--rate_limit takes a number of seconds"):
        call_command("worker", "--rate_limit", value, "--dry-run", stdout=StringIO())
