"""Django's Tasks framework through the ledger: @task, enqueue, worker, get_result."""

import sys
from datetime import timedelta

import pytest
from django.utils import timezone

from django_dbq.exceptions import InvalidJobError
from django_dbq.models import Job
from django_dbq.projections.replay import verify_projection
from django_dbq.worker import Worker
from tests import tasks_app

try:
    from django.tasks import TaskResultStatus
    from django.tasks.exceptions import TaskResultDoesNotExist
except ImportError:
    from django_tasks import TaskResultStatus
    from django_tasks.exceptions import TaskResultDoesNotExist

pytestmark = pytest.mark.django_db(transaction=True)


def drain(queue="default"):
    Worker(queue, burst=True, handle_signals=False).run()


def test_enqueue__creates_a_job_in_the_ledger_and_the_worker_runs_it():
    result = tasks_app.add.enqueue(2, 3)

    assert result.status == TaskResultStatus.READY
    job = Job.objects.get(pk=result.id)
    assert (job.name, job.state, job.workspace["args"]) == ("django_dbq.task", "NEW", [2, 3])

    drain()
    done = tasks_app.add.get_result(result.id)

    assert done.status == TaskResultStatus.SUCCESSFUL
    assert done.return_value == 5
    assert done.started_at is not None and done.finished_at >= done.started_at
    assert len(done.worker_ids) == 1 and done.errors == []
    assert [e.kind for e in job.events.all()] == ["created", "claimed", "completed"]
    assert verify_projection().ok


def test_enqueue__keeps_queue_priority_kwargs_and_run_after():
    later = timezone.now() + timedelta(hours=1)
    result = tasks_app.shout.using(run_after=later).enqueue("hi", times=2)

    job = Job.objects.get(pk=result.id)
    assert (job.queue_name, job.priority, job.run_after) == ("tasks", 5, later)
    drain("tasks")
    assert tasks_app.shout.get_result(result.id).status == TaskResultStatus.READY

    now = tasks_app.shout.enqueue("hi", times=2)
    drain("tasks")
    assert tasks_app.shout.get_result(now.id).return_value == {"said": "HIHI"}


def test_a_failing_task__is_failed_with_its_error():
    result = tasks_app.explode.enqueue()

    drain()
    failed = tasks_app.explode.get_result(result.id)

    assert failed.status == TaskResultStatus.FAILED
    assert failed.errors[0].exception_class is RuntimeError
    assert "task exploded" in failed.errors[0].traceback
    with pytest.raises(ValueError):
        failed.return_value  # noqa: B018


def test_context_and_async_tasks_run():
    with_context = tasks_app.with_context.enqueue(7)
    doubled = tasks_app.async_double.enqueue(21)

    drain()

    assert tasks_app.with_context.get_result(with_context.id).return_value == {
        "attempt": 1,
        "value": 7,
    }
    assert tasks_app.async_double.get_result(doubled.id).return_value == 42


def test_arguments_json_cannot_hold_are_refused_at_enqueue(count_rows):
    with pytest.raises(InvalidJobError, match="arguments must be JSON"):
        tasks_app.add.enqueue(object(), 1)
    with pytest.raises(InvalidJobError, match="must be JSON"):
        tasks_app.shout.enqueue("x", times={1, 2})

    assert count_rows("django_dbq_jobevent") == 0


def test_get_result__of_an_unknown_id_raises():
    with pytest.raises(TaskResultDoesNotExist):
        tasks_app.add.get_result("00000000-0000-0000-0000-000000000000")
    with pytest.raises(TaskResultDoesNotExist):
        tasks_app.add.get_result("not-an-id")


@pytest.mark.parametrize(
    "path",
    [
        "subprocess.call",
        "django.utils.autoreload.subprocess",
        "tests.jobs.task_one",
        42,
        "unittest.__main__.main",
        "this.s",
    ],
)
def test_task_job__runs_only_tasks_of_this_backend_whatever_the_workspace_says(path, tmp_path):
    # Anyone who may enqueue writes the workspace; it must not name any callable.
    marker = tmp_path / "ran"
    job = Job.objects.create(
        name="django_dbq.task",
        workspace={"task": path, "args": [f"touch {marker}"], "kwargs": {"shell": True}},
    )

    drain()

    job.refresh_from_db()
    assert job.state == Job.STATES.FAILED
    assert not marker.exists()
    assert "this" not in sys.modules and "unittest.__main__" not in sys.modules
    assert "is not a task of the LedgerBackend" in job.events.last().payload["error"]["message"]
