"""The worker loop, in process, against a real PostgreSQL."""

import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_dbq.events.claims import CLAIM_FIELDS, claim_jobs, expire_leases, new_worker_key
from django_dbq.management.commands.worker import Worker as CompatWorker
from django_dbq.models import Job
from django_dbq.projections.replay import verify_projection
from django_dbq.worker import Worker
from tests import jobs as test_jobs
from tests.conftest import in_thread, listen

pytestmark = pytest.mark.django_db(transaction=True)

KEY = new_worker_key()


@pytest.fixture(autouse=True)
def clear_calls():
    test_jobs.CALLS.clear()


def drain(queue="default", **kwargs):
    worker = Worker(queue, burst=True, handle_signals=False, **kwargs)
    worker.run()
    return worker


def kinds(job):
    return list(job.events.values_list("kind", flat=True))


def test_worker__runs_each_task_in_turn_passing_the_workspace():
    job = Job.objects.create(name="twotasks", workspace={"start": 1})

    drain()

    job.refresh_from_db()
    assert job.state == Job.STATES.COMPLETE and job.next_task == ""
    assert job.workspace == {"start": 1, "one": True, "two": True}
    assert kinds(job) == ["created", "claimed", "task_done", "claimed", "completed"]
    assert verify_projection().ok


def test_worker__records_who_ran_each_task_and_how_long():
    job = Job.objects.create(name="testjob")

    worker = drain()

    claimed, completed = job.events.filter(kind__in=["claimed", "completed"])
    assert claimed.payload["worker"] == worker.worker_id
    assert {"host", "pid", "lease_until"} <= set(claimed.payload)
    assert completed.payload["task"] == "tests.jobs.task_one"
    assert completed.payload["duration"] >= 0
    assert Job.objects.get(pk=job.pk).claimed_by is None


def test_worker__class_keeps_its_django_db_queue_signature():
    worker = CompatWorker("default", 1, handle_signals=False)

    assert (worker.queue_name, worker.rate_limit_in_seconds) == ("default", 1)
    assert callable(worker.shutdown)


def test_hooks__run_in_order_pre_task_post():
    Job.objects.create(name="hooks", workspace={"tag": "a"})

    drain()

    assert test_jobs.CALLS == [("pre", "a"), ("task", "a"), ("post", "a")]


def test_hooks__failure_hook_gets_the_exception_then_post_hook_runs():
    job = Job.objects.create(name="hooks", workspace={"tag": "b", "fail": True})

    drain()

    assert test_jobs.CALLS == [
        ("pre", "b"),
        ("task", "b"),
        ("failure", "b", "ValueError"),
        ("post", "b"),
    ]
    job.refresh_from_db()
    assert job.state == Job.STATES.FAILED
    failed = job.events.get(kind="failed")
    assert failed.payload["error"]["type"] == "builtins.ValueError"
    assert failed.payload["error"]["message"] == "task failed on purpose: b"
    assert "Traceback" in failed.payload["error"]["traceback"]
    assert failed.payload["workspace"] == {"tag": "b", "fail": True}


def test_hooks__the_failure_hook_runs_once_the_failure_is_recorded():
    Job.objects.create(name="fails_seen_by_its_hook", workspace={"tag": "r", "fail": True})

    drain()

    # As django-db-queue saves FAILED before it calls the hook.
    assert test_jobs.CALLS == [("task", "r"), ("failure", Job.STATES.FAILED)]


def test_hooks__no_failure_hook_for_a_failure_that_is_not_recorded(caplog):
    job = Job.objects.create(name="loses_its_job", workspace={"tag": "l"})

    drain(max_jobs=1)

    # The job went back to its queue before its failure could be recorded: it
    # runs again, so this was not its failure; the post-task hook still runs.
    assert test_jobs.CALLS == [("task", "l"), ("post", "l")]
    assert kinds(job) == ["created", "claimed", "lease_revoked"]
    assert "event=lease_lost" in caplog.text


def test_hooks__failing_pre_task_hook_skips_the_task_and_fails_the_job():
    job = Job.objects.create(name="failing_pre", workspace={"tag": "c"})

    drain()

    assert test_jobs.CALLS == [("pre", "c"), ("failure", "c", "RuntimeError"), ("post", "c")]
    assert Job.objects.get(pk=job.pk).state == Job.STATES.FAILED


def test_hooks__failing_post_task_hook_is_logged_and_the_job_still_completes(caplog):
    job = Job.objects.create(name="failing_post", workspace={"tag": "d"})

    drain()

    assert test_jobs.CALLS == [("task", "d"), ("post", "d")]
    assert Job.objects.get(pk=job.pk).state == Job.STATES.COMPLETE
    assert "post-task hook of job" in caplog.text


def test_hooks__failing_failure_hook_still_leaves_the_job_failed():
    job = Job.objects.create(name="failing_failure_hook", workspace={"tag": "e", "fail": True})

    drain()

    assert test_jobs.CALLS == [("task", "e"), ("failure", "e"), ("post", "e")]
    assert Job.objects.get(pk=job.pk).state == Job.STATES.FAILED


def run_order():
    return [c[1] for c in test_jobs.CALLS if c[0] == "task"]


def test_worker__runs_by_priority_then_age_and_waits_for_run_after():
    Job.objects.create(name="hooks", workspace={"tag": "old"})
    Job.objects.create(name="hooks", workspace={"tag": "critical"}, priority=2)
    Job.objects.create(name="hooks", workspace={"tag": "new"})
    Job.objects.create(name="hooks", workspace={"tag": "important"}, priority=1)
    later = Job.objects.create(
        name="hooks",
        workspace={"tag": "later"},
        priority=5,
        run_after=timezone.now() + timedelta(hours=1),
    )

    drain()

    assert run_order() == ["critical", "important", "old", "new"]
    assert Job.objects.get(pk=later.pk).state == Job.STATES.NEW


def test_worker__only_takes_jobs_of_its_queue():
    mine = Job.objects.create(name="testjob", queue_name="mine")
    other = Job.objects.create(name="testjob")

    drain("mine")

    assert Job.objects.get(pk=mine.pk).state == Job.STATES.COMPLETE
    assert Job.objects.get(pk=other.pk).state == Job.STATES.NEW


def test_worker__leaves_a_job_whose_name_it_does_not_know_for_a_worker_that_does(settings):
    # A rolling deploy: new code enqueued `testjob`; this worker's settings predate it.
    new = Job.objects.create(name="testjob")
    kept = Job.objects.create(name="twotasks")
    known = settings.JOBS
    settings.JOBS = {"twotasks": known["twotasks"]}

    drain()

    assert [e.kind for e in Job.objects.get(pk=new.pk).events.all()] == ["created"]
    assert Job.objects.get(pk=kept.pk).state == Job.STATES.COMPLETE
    assert Job.get_queue_depths() == {"default": 1}
    out = StringIO()
    call_command("dbq_stats", stdout=out)
    assert "settings.JOBS does not know here (a worker that knows it runs them): testjob (1)" in (
        out.getvalue()
    )

    settings.JOBS = known
    drain()
    assert Job.objects.get(pk=new.pk).state == Job.STATES.COMPLETE


def test_worker__fails_a_job_whose_task_does_not_import(settings):
    job = Job.objects.create(name="testjob")
    settings.JOBS = {"testjob": ["tests.jobs.no_such_task"]}

    drain()

    job.refresh_from_db()
    assert job.state == Job.STATES.FAILED
    assert "no_such_task" in job.events.get(kind="failed").payload["error"]["message"]


def test_worker__records_a_task_that_calls_sys_exit_then_exits():
    job = Job.objects.create(name="exits")
    waiting = Job.objects.create(name="testjob")

    with pytest.raises(SystemExit):
        drain()

    failed = Job.objects.get(pk=job.pk)
    assert failed.state == Job.STATES.FAILED
    assert failed.events.get(kind="failed").payload["error"]["type"] == "builtins.SystemExit"
    assert Job.objects.get(pk=waiting.pk).state == Job.STATES.NEW
    assert verify_projection().ok


def test_worker__fails_a_job_whose_task_leaves_an_unstorable_workspace():
    job = Job.objects.create(name="unstorable", workspace={"keep": 1})

    drain()

    job.refresh_from_db()
    assert job.state == Job.STATES.FAILED and job.workspace == {"keep": 1}
    assert "cannot be stored as JSON" in job.events.get(kind="failed").payload["error"]["message"]


def test_worker__max_jobs_stops_after_that_many():
    Job.objects.bulk_create([Job(name="testjob") for _ in range(5)])

    worker = Worker(max_jobs=3, handle_signals=False)
    worker.run()

    assert worker.jobs_run == 3
    assert Job.objects.filter(state=Job.STATES.COMPLETE).count() == 3
    assert Job.objects.filter(state=Job.STATES.NEW).count() == 2


def test_worker__claims_and_records_in_batches_not_one_round_trip_per_job():
    Job.objects.bulk_create([Job(name="testjob") for _ in range(300)])

    with CaptureQueriesContext(connection) as queries:
        drain()

    assert Job.objects.filter(state=Job.STATES.COMPLETE).count() == 300
    event_writes = [q for q in queries.captured_queries if "django_dbq_jobevent" in q["sql"]]
    # Batches grow 1, 2, 4, ... 100: a claim and an acknowledgement per batch.
    assert len(event_writes) <= 2 * 10, len(event_writes)


def test_worker__gives_back_claimed_jobs_it_has_no_time_to_start(settings, runs_file):
    settings.DBQ_BATCH_SECONDS = 0.05
    Job.objects.bulk_create([Job(name="counted_once", workspace={"sleep": 0.06}) for _ in range(6)])
    worker = Worker(burst=True, handle_signals=False)
    worker._batch_size = 4

    worker.run()

    assert Job.objects.filter(events__kind="released").distinct().count() == 3
    assert Job.objects.filter(state=Job.STATES.COMPLETE).count() == 6
    assert len(runs_file.read_text().splitlines()) == 6
    assert verify_projection().ok


AT_ONCE = {"testjob": {"limit": 1, "delays": [0]}}


def test_lease__expired_claim_returns_the_job_and_another_worker_finishes_it():
    job = Job.objects.create(name="testjob")
    claim_jobs("default", 1, "dead-worker", KEY, "h", 1, 1)
    time.sleep(1.05)

    assert expire_leases("reaper", rules=AT_ONCE) == [(job.id, "retried")]
    drain()

    # The job its worker was lost in counts an attempt (tests/test_worker_lost.py).
    assert kinds(job) == ["created", "claimed", "retried", "claimed", "completed"]
    expired = job.events.get(kind="retried")
    assert (expired.payload["worker"], expired.payload["noticed_by"]) == ("dead-worker", "reaper")


def test_lease__a_worker_that_lost_its_lease_cannot_record_an_outcome():
    from django_dbq.events.claims import append_held

    job = Job.objects.create(name="testjob")
    claim_jobs("default", 1, "slow-worker", KEY, "h", 1, 1)
    time.sleep(1.05)
    expire_leases("reaper", rules=AT_ONCE)
    claim_jobs("default", 1, "new-worker", new_worker_key(), "h", 2, 30)

    assert append_held(KEY, [(job.id, "completed", "{}")]) == set()
    assert Job.objects.get(pk=job.pk).claimed_by == "new-worker"


def test_claim_fields__follow_the_model_field_order():
    # The hash of the worker's key is not read back; a job's unique key is read
    # when a task asks for it.
    assert CLAIM_FIELDS + ("lease_key", "unique_key") == tuple(
        f.attname for f in Job._meta.concrete_fields
    )


def test_a_task__reads_its_jobs_unique_key():
    job = Job.objects.create(name="keyed", unique_key="invoice-42")

    drain()

    job.refresh_from_db()
    assert job.state == Job.STATES.COMPLETE
    assert job.workspace == {"unique_key": "invoice-42"}


def notes(conn):
    return [n.payload for n in conn.notifies(timeout=0.3)]


def test_notify__one_notification_per_statement_naming_the_queues():
    conn = listen()
    try:
        names = ["default", "q'; DROP", 'q"uote', "ünï"]
        Job.objects.bulk_create([Job(name="testjob", queue_name=names[n % 4]) for n in range(40)])
        received = notes(conn)
        Job.objects.create(name="testjob", run_after=timezone.now() + timedelta(hours=1))
        later = notes(conn)
    finally:
        conn.close()

    assert len(received) == 1
    import orjson

    assert sorted(orjson.loads(received[0])) == sorted(names)
    assert later == ['["default"]']


def test_wakeup__an_idle_worker_starts_a_new_job_without_waiting_for_its_poll(settings):
    settings.DBQ_POLL_SECONDS = 30
    thread = in_thread(Worker(max_jobs=1, handle_signals=False))
    time.sleep(0.5)  # the worker is now idle, waiting on LISTEN

    job = Job.objects.create(name="testjob")
    thread.join(timeout=10)

    assert not thread.is_alive()
    started = job.events.get(kind="claimed").at - job.events.get(kind="created").at
    assert started < timedelta(seconds=2)


def test_wakeup__a_scheduled_job_starts_when_due_without_polling(settings):
    settings.DBQ_POLL_SECONDS = 30
    due = timezone.now() + timedelta(seconds=1.5)
    job = Job.objects.create(name="testjob", run_after=due)
    thread = in_thread(Worker(max_jobs=1, handle_signals=False))
    thread.join(timeout=10)

    assert not thread.is_alive()
    claimed_at = job.events.get(kind="claimed").at
    assert due <= claimed_at < due + timedelta(seconds=1)


def test_worker__a_task_that_saves_its_job_records_only_what_changed():
    job = Job.objects.create(name="saves", workspace={"start": 1})

    drain()

    assert kinds(job) == ["created", "claimed", "updated", "completed"]
    updated = job.events.get(kind="updated")
    assert updated.payload == {"workspace": {"start": 1, "progress": 50}}
    claimed = job.events.get(kind="claimed")
    seen = test_jobs.SEEN
    assert seen["created"] == Job.objects.get(pk=job.pk).created
    assert seen["modified"] == claimed.at
    assert abs((seen["lease_until"] - claimed.at).total_seconds() - 30) < 1
    assert Job.objects.get(pk=job.pk).workspace == {"start": 1, "progress": 50}


def test_worker__logs_each_transition_as_key_value_pairs(caplog):
    job = Job.objects.create(name="twotasks")

    with caplog.at_level("INFO", logger="django_dbq.worker"):
        drain()

    lines = [r.getMessage() for r in caplog.records if r.name == "django_dbq.worker"]
    events = [line.split()[0] for line in lines]
    assert events == ["event=started", "event=task_done", "event=started", "event=completed"]
    assert all(f"job={job.id}" in line for line in lines)
    assert "name='twotasks'" in lines[0] and "attempt=1" in lines[0]


def test_worker__a_long_task_does_not_hold_the_rest_of_its_batch(settings, runs_file):
    settings.DBQ_BATCH_SECONDS = 0.2
    slow = Job.objects.create(name="counted_once", workspace={"sleep": 2}, priority=5)
    quick = Job.objects.bulk_create([Job(name="testjob") for _ in range(4)])
    first = Worker(burst=True, handle_signals=False)
    first._batch_size = 5
    thread = in_thread(first)
    time.sleep(0.8)  # the slow job runs; its batch's time is up

    drain()  # a second worker

    assert Job.objects.filter(pk__in=[j.pk for j in quick], state="COMPLETE").count() == 4
    assert Job.objects.get(pk=slow.pk).state == Job.STATES.PROCESSING
    thread.join(timeout=10)
    assert Job.objects.get(pk=slow.pk).state == Job.STATES.COMPLETE
    assert {kinds(job)[2] for job in quick} == {"released"}


def test_outcomes__are_recorded_while_a_slow_job_of_the_same_batch_runs(settings, runs_file):
    # The batch that holds the slow job holds fast ones before it (batches double
    # 1, 2, 4, ... 32); their outcomes must not wait for it, nor run again if the
    # worker dies in it.
    settings.DBQ_BATCH_SECONDS = 30
    fast = Job.objects.bulk_create([Job(name="counted_once") for _ in range(40)])
    slow = Job.objects.create(name="counted_once", workspace={"sleep": 2})
    worker = Worker(burst=True, handle_signals=False)
    thread = in_thread(worker)
    deadline = time.monotonic() + 20
    while not test_jobs.runs_of(slow.id) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.4)

    states = set(Job.objects.filter(pk__in=[j.pk for j in fast]).values_list("state", flat=True))
    running = Job.objects.get(pk=slow.pk).state
    thread.join(timeout=20)

    assert (states, running) == ({Job.STATES.COMPLETE}, Job.STATES.PROCESSING)
    assert Job.objects.get(pk=slow.pk).state == Job.STATES.COMPLETE
    assert verify_projection().ok
