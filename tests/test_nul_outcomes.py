"""A NUL character in a task's error or workspace, which jsonb refuses, fails that job instead
of stopping the worker's outcomes."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from django_dbq.models import Job
from django_dbq.worker import Worker

pytestmark = pytest.mark.django_db(transaction=True)


def nul_message_task(job):
    raise ValueError("bad byte \x00 in input")


def nul_workspace_task(job):
    job.workspace["read"] = "a\x00b"


@pytest.mark.parametrize("task", ["nul_message_task", "nul_workspace_task"])
def test_a_nul_in_an_outcome_does_not_wedge_the_worker(settings, task):
    settings.JOBS = {**settings.JOBS, "nul": [f"tests.test_nul_outcomes.{task}"]}
    job = Job.objects.create(name="nul")
    behind = Job.objects.create(name="testjob")
    worker = Worker("default", burst=True, handle_signals=False)

    def run():
        try:
            worker.run()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(8)
    wedged = thread.is_alive()
    worker.alive = False
    worker._stop_requested.set()
    thread.join(20)
    states = (Job.objects.get(pk=job.pk).state, Job.objects.get(pk=behind.pk).state)
    assert not wedged, f"burst worker still running after 8 s; states {states}"
    assert states[1] == "COMPLETE"
