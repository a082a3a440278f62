"""django-db-queue 3.3's one-job step, `process_job` and `_process_job`, for loops and tests.

`Worker.run` does not use them: it claims in batches (loop.py). These claim one
job with the same statement, run it with the same code and record its outcome
before they return, so a test can look at the job right after.
"""

from __future__ import annotations

import importlib

from django.utils import timezone

from django_dbq.worker.state import WorkerState

# process_job sleeps through this module's `sleep`, looked up when it runs, so
# that 3.3's tests can patch "django_dbq.management.commands.worker.sleep".
_COMMAND_MODULE = "django_dbq.management.commands.worker"


class OneJobAtATime(WorkerState):
    """3.3's `process_job` and `_process_job` (the rest of `Worker` supplies what they call)."""

    def process_job(self) -> None:
        """Sleep a second, then run one job unless the last ended under `rate_limit_in_seconds` ago.

        As 3.3, this touches only `rate_limit_in_seconds`, `last_job_finished`
        and `_process_job` on self (3.3's tests call it with a mock for self).
        """
        importlib.import_module(_COMMAND_MODULE).sleep(1)
        if (
            self.last_job_finished
            and (timezone.now() - self.last_job_finished).total_seconds()
            < self.rate_limit_in_seconds
        ):
            return
        self._process_job()
        self.last_job_finished = timezone.now()

    def _process_job(self) -> None:
        """Claim one ready job of the queue, run its next task with its hooks, record the outcome.

        Returns None, quietly, when no job is ready. A database error is raised,
        as in 3.3, once the worker has tried again to record what it finished
        and has given back what it claimed and did not start.
        """
        self._release_unstarted(overdue_only=False)  # left over when a release failed
        jobs = self._claim_up_to(1)
        self._run_after_hooks()  # of outcomes a failed record left to the claim
        if not jobs:
            return None
        try:
            # The heartbeat renews the lease through a long task and records
            # `stopping` when a signal comes, as under run().
            with self._beating():
                outcome = self._run_claimed(jobs[0])
                self._flush()
        except BaseException:
            self._finish()
            raise
        self._run_after_hooks()
        if outcome.fatal is not None:
            raise outcome.fatal
        return None
