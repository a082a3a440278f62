"""Stopping on a signal: finish the running task and record `stopping` for its job."""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from django_dbq import conf, jsonutil
from django_dbq.events.claims import append_held
from django_dbq.projections.models import Job
from django_dbq.worker.state import WorkerState

logger = logging.getLogger("django_dbq.worker")


class SignalHandling(WorkerState):
    """The signal handlers, and the `stopping` event the heartbeat records after one."""

    def init_signals(self) -> None:
        """Stop gracefully on SIGINT, SIGTERM and SIGQUIT."""
        for name in ("SIGINT", "SIGTERM", "SIGQUIT"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), self.shutdown)

    def shutdown(self, signum: int, frame: Any) -> None:
        """First signal: finish the current task, then exit. Second: exit at once."""
        if self._signalled:
            # The held jobs return to their queue when their lease runs out.
            os._exit(1)
        self._signalled = True
        self._signalled_at = time.monotonic()
        self.alive = False
        self._stop_requested.set()
        self._wake.set()
        job = self.current_job
        if job is not None and job.pk not in self._held:
            # django-db-queue 3.3 saved any current_job as STOPPING. Only the worker
            # holding a job may record `stopping` (a NEW job cannot be STOPPING, and
            # no role may forge a claim), so a job set here by hand stays as it is.
            logger.warning(
                "event=shutdown_job_not_held job=%s state=%s worker=%s reason=%r",
                job.pk,
                job.state,
                self.worker_id,
                "this worker did not claim the job; only its holder records stopping",
            )

    def _record_stopping(self) -> None:
        """After a signal: record `stopping` for the running job (from the heartbeat or the loop)."""
        with self._stopping_lock:
            job = self.current_job
            if self.alive or job is None or job.pk in self._stopping_sent:
                return
            if job.pk not in self._held:
                return  # not claimed by this worker (see shutdown)
            payload = jsonutil.dumps({"worker": self.worker_id})
            recorded = append_held(self._key, [(job.pk, "stopping", payload)], using=self.using)
            if job.pk not in recorded:
                # The lease was lost, or (from the heartbeat's own connection) the
                # claim is not committed yet: tried again on the next wake-up and
                # by the loop once the task ends.
                return
            self._stopping_sent.add(job.pk)
            if job.state == Job.STATES.PROCESSING:  # not yet the task's outcome
                job.state = Job.STATES.STOPPING
            logger.info("event=stopping job=%s worker=%s", job.pk, self.worker_id)

    def _exit_if_grace_is_over(self) -> None:
        """From the heartbeat: past DBQ_SHUTDOWN_GRACE after the signal, exit as on a second one.

        The outcomes of finished tasks are recorded and the unstarted jobs given
        back first; the running job, in STOPPING, comes back when its lease runs
        out (lease_expired, no attempt counted: its worker was stopped).
        """
        grace = conf.shutdown_grace()
        job = self.current_job
        if grace is None or not self._signalled or job is None:
            return
        if time.monotonic() - self._signalled_at < grace:
            return
        logger.warning(
            "event=shutdown_grace_expired job=%s grace=%ss worker=%s", job.pk, grace, self.worker_id
        )
        self._flush()
        self._release_unstarted(overdue_only=False)
        os._exit(1)
