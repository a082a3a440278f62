"""Retries, cancel and requeue, through the public API and a real worker loop."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from django_dbq.checks import check_jobs_setting
from django_dbq.events.claims import append_held, claim_jobs, new_worker_key
from django_dbq.models import Job
from django_dbq.projections.replay import verify_projection
from django_dbq.retries import retry_delay
from django_dbq.worker import Worker
from tests import jobs as test_jobs

KEY = new_worker_key()


@pytest.fixture(autouse=True)
def clear_calls():
    test_jobs.CALLS.clear()


def drain(queue="default"):
    Worker(queue, burst=True, handle_signals=False).run()


def kinds(job):
    return list(job.events.values_list("kind", flat=True))


@pytest.mark.django_db(transaction=True)
def test_retries__a_flaky_task_is_retried_until_it_passes():
    job = Job.objects.create(name="flaky", workspace={"fail_times": 2})

    drain()

    job.refresh_from_db()
    assert job.state == Job.STATES.COMPLETE
    assert kinds(job) == [
        "created",
        "claimed",
        "task_done",
        "claimed",
        "retried",
        "claimed",
        "retried",
        "claimed",
        "completed",
    ]
    # Each attempt starts from the workspace as it was before the failing task.
    seen = [(c[1], c[2].get("touched")) for c in test_jobs.CALLS if c[0] == "task"]
    assert seen == [(0, None), (1, None), (2, None)]
    assert job.attempts == 2
    retried = job.events.filter(kind="retried")
    assert [e.payload["attempt"] for e in retried] == [1, 2]
    assert retried[0].payload["error"]["message"] == "flaky failure 1"
    # The failure hook waits for the last attempt; the post-task hook runs every time.
    assert not [c for c in test_jobs.CALLS if c[0] == "failure"]
    assert len([c for c in test_jobs.CALLS if c[0] == "post"]) == 4
    assert verify_projection().ok


@pytest.mark.django_db(transaction=True)
def test_retries__the_job_fails_when_they_run_out_and_then_the_failure_hook_runs():
    job = Job.objects.create(name="flaky", workspace={"fail_times": 5})

    drain()

    job.refresh_from_db()
    assert job.state == Job.STATES.FAILED and job.attempts == 3
    assert kinds(job).count("retried") == 2 and kinds(job)[-1] == "failed"
    history = StringIO()
    call_command("job_history", str(job.id), stdout=history)
    assert (
        "retried (attempt 1)" in history.getvalue() and "retried (attempt 2)" in history.getvalue()
    )
    assert [c[0] for c in test_jobs.CALLS if c[0] == "failure"] == ["failure"]


@pytest.mark.django_db(transaction=True)
def test_retries__wait_for_the_backoff(settings):
    settings.JOBS = {**settings.JOBS, "flaky": {**settings.JOBS["flaky"], "retry_delay": 60}}
    job = Job.objects.create(name="flaky", workspace={"fail_times": 1})

    drain()

    job.refresh_from_db()
    assert job.state == Job.STATES.READY and job.next_task == "tests.jobs.flaky_task"
    assert timedelta(seconds=55) < job.run_after - timezone.now() < timedelta(seconds=61)


def test_retry_delay__exponential_with_jitter_constant_and_custom():
    delays = [retry_delay({"retry_delay": 10}, attempt, None) for attempt in (1, 2, 3)]
    assert 5 <= delays[0] <= 15 and 10 <= delays[1] <= 30 and 20 <= delays[2] <= 60
    assert retry_delay({"retry_delay": 10, "retry_max_delay": 15}, 9, None) <= 22.5
    assert retry_delay({"retry_backoff": "constant", "retry_delay": 7}, 4, None) == 7
    assert retry_delay({"retry_backoff": "tests.jobs.backoff_of_attempt"}, 3, None) == 300


@pytest.mark.parametrize(
    ("config", "error_id"),
    [
        ({"retries": -1}, "django_dbq.E009"),
        ({"retries": "3"}, "django_dbq.E009"),
        ({"retry_delay": "soon"}, "django_dbq.E010"),
        ({"retry_backoff": "tests.jobs.no_such_backoff"}, "django_dbq.E007"),
    ],
)
def test_check__reports_bad_retry_settings(settings, config, error_id):
    settings.JOBS = {"a": {"tasks": ["tests.jobs.task_one"], **config}}

    assert [e.id for e in check_jobs_setting()] == [error_id]


@pytest.mark.django_db
def test_cancel__a_waiting_job_is_cancelled_at_once_and_never_runs():
    job = Job.objects.create(name="testjob")

    assert job.cancel("not needed") == "cancelled"

    assert job.state == Job.STATES.CANCELLED
    assert job.events.last().payload == {"reason": "not needed"}
    assert Job.get_queue_depths() == {}
    assert claim_jobs("default", 10, "w", KEY, "h", 1, 30) == []
    assert job.cancel() is None


@pytest.mark.django_db
def test_cancel__a_running_job_stops_after_its_current_task():
    job = Job.objects.create(name="twotasks")
    claim_jobs("default", 1, "w", KEY, "h", 1, 30)

    assert job.cancel() == "cancel_requested"
    assert (job.state, job.cancel_requested) == (Job.STATES.PROCESSING, True)
    append_held(KEY, [(job.id, "task_done", '{"next_task": "tests.jobs.task_two"}')])

    job.refresh_from_db()
    assert (job.state, job.next_task, job.cancel_requested) == (
        Job.STATES.CANCELLED,
        "tests.jobs.task_two",
        False,
    )
    assert verify_projection().ok


@pytest.mark.django_db(transaction=True)
def test_requeue__a_failed_job_runs_again_from_the_task_that_failed():
    job = Job.objects.create(name="flaky", workspace={"fail_times": 3})
    drain()
    job.refresh_from_db()
    assert job.state == Job.STATES.FAILED

    assert job.requeue("fixed upstream") is True
    assert (job.state, job.attempts, job.next_task) == (
        Job.STATES.READY,
        0,
        "tests.jobs.flaky_task",
    )
    job.workspace["fail_times"] = 0
    job.save()
    drain()

    job.refresh_from_db()
    assert job.state == Job.STATES.COMPLETE
    assert kinds(job)[-5:] == ["failed", "requeued", "updated", "claimed", "completed"]
    assert verify_projection().ok
    assert Job.objects.create(name="testjob").requeue() is False


@pytest.mark.django_db
def test_cancel_and_requeue_commands__select_by_queue_name_and_state():
    Job.objects.create(name="testjob", queue_name="a")
    Job.objects.create(name="testjob", queue_name="a")
    Job.objects.create(name="twotasks", queue_name="b")
    out = StringIO()

    call_command("cancel_jobs", "--queue", "a", stdout=out)
    assert out.getvalue().startswith("cancelled 2 waiting jobs")
    assert Job.objects.filter(state="CANCELLED").count() == 2

    out = StringIO()
    call_command("requeue_jobs", "--state", "CANCELLED", "--name", "testjob", stdout=out)
    assert out.getvalue().strip() == "requeued 2 jobs"
    assert Job.objects.filter(state="READY").count() == 2
    assert verify_projection().ok

    with pytest.raises(CommandError, match="Name jobs by id"):
        call_command("cancel_jobs")
    with pytest.raises(CommandError, match="Unknown state"):
        call_command("cancel_jobs", "--state", "LOST")


@pytest.mark.django_db(transaction=True)
def test_retries__a_backoff_that_raises_fails_the_job_and_the_worker_goes_on(settings):
    settings.JOBS = {
        **settings.JOBS,
        "flaky": {**settings.JOBS["flaky"], "retry_backoff": "tests.jobs.broken_backoff"},
    }
    job = Job.objects.create(name="flaky", workspace={"fail_times": 1})
    after = Job.objects.create(name="testjob")

    drain()

    assert Job.objects.get(pk=job.pk).state == Job.STATES.FAILED
    assert Job.objects.get(pk=after.pk).state == Job.STATES.COMPLETE


@pytest.mark.django_db
def test_save__may_move_a_finished_job_to_cancelled_and_back():
    job = Job.objects.create(name="testjob", state="FAILED")

    job.state = Job.STATES.CANCELLED
    job.save()
    job.state = Job.STATES.READY
    job.save()

    assert [e.payload for e in job.events.filter(kind="updated")] == [
        {"state": "CANCELLED"},
        {"state": "READY"},
    ]


@pytest.mark.django_db
def test_release_jobs__returns_a_dead_workers_job_before_its_lease_ends_and_it_runs_again():
    job = Job.objects.create(name="twotasks")
    waiting = Job.objects.create(name="testjob", queue_name="other")
    claim_jobs("default", 1, "gone-worker", KEY, "h", 1, 3600)
    out = StringIO()

    call_command("release_jobs", "--queue", "default", "--reason", "host lost", stdout=out)

    assert out.getvalue().strip() == "released 1 running jobs"
    revoked = job.events.last()
    assert (revoked.kind, revoked.payload["worker"], revoked.payload["reason"]) == (
        "lease_revoked",
        "gone-worker",
        "host lost",
    )
    # The worker that was thought gone can no longer record anything for the job.
    assert append_held(KEY, [(job.id, "completed", "{}")]) == set()
    drain()
    assert kinds(job) == [
        "created",
        "claimed",
        "lease_revoked",
        "claimed",
        "task_done",
        "claimed",
        "completed",
    ]
    assert Job.objects.get(pk=waiting.pk).state == Job.STATES.NEW
    assert verify_projection().ok


@pytest.mark.django_db
def test_release__admin_action_and_queryset_leave_waiting_and_finished_jobs_alone(admin_client):
    from django.urls import reverse

    running = Job.objects.create(name="testjob")
    claim_jobs("default", 1, "gone-worker", KEY, "h", 1, 3600)
    done = Job.objects.create(name="testjob", state="COMPLETE")
    waiting = Job.objects.create(name="testjob")

    admin_client.post(
        reverse("admin:django_dbq_job_changelist"),
        {"action": "release", "_selected_action": [running.id, done.id, waiting.id]},
    )

    assert Job.objects.get(pk=running.pk).state == Job.STATES.READY
    assert [
        j.state for j in Job.objects.filter(pk__in=[done.pk, waiting.pk]).order_by("state")
    ] == [
        Job.STATES.COMPLETE,
        Job.STATES.NEW,
    ]
    assert Job.objects.filter(pk=running.pk).release() == 0
    assert verify_projection().ok
