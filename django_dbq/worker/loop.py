"""The worker's loop: `Worker.run` processes batches until told to stop.

One iteration records the outcomes of the last batch and claims the next batch
(one round trip), then runs each job's next task with its hooks.
"""

from __future__ import annotations

import logging
import threading
import time

from django.db import DEFAULT_DB_ALIAS, DatabaseError

from django_dbq.events.claims import expire_leases
from django_dbq.projections.models import Job
from django_dbq.runner import Outcome, run_task
from django_dbq.worker.compat import OneJobAtATime
from django_dbq.worker.heartbeat import Heartbeat
from django_dbq.worker.retention import Retention
from django_dbq.worker.schedules import Scheduling
from django_dbq.worker.sealing import Sealing
from django_dbq.worker.wait import Waiting

logger = logging.getLogger("django_dbq.worker")


class Worker(Heartbeat, Waiting, Scheduling, Sealing, Retention, OneJobAtATime):
    """A worker for one queue; `run()` processes jobs until told to stop.

    `process_job()` and `_process_job()` are django-db-queue 3.3's one-job step (compat.py).
    With `schedules` (the default), it also enqueues the due ticks of the periodic
    jobs of settings.JOBS (schedules.py), and, with settings.DBQ_LEDGER_KEY, seals
    the ledger every DBQ_SEAL_SECONDS (sealing.py).
    """

    def __init__(
        self,
        name: str = "default",
        rate_limit_in_seconds: float = 0,
        *,
        burst: bool = False,
        max_jobs: int | None = None,
        using: str = DEFAULT_DB_ALIAS,
        handle_signals: bool = True,
        schedules: bool = True,
    ) -> None:
        super().__init__(name, rate_limit_in_seconds, burst=burst, max_jobs=max_jobs, using=using)
        self.schedules_enabled = schedules
        # A program that embeds the worker may keep its own signal handlers.
        if handle_signals and threading.current_thread() is threading.main_thread():
            self.init_signals()

    def run(self) -> None:
        """Process jobs until stopped (or, with burst, until none is ready)."""
        with self._beating():
            try:
                self._loop()
            finally:
                self._finish()
                self._stop_listening()
        if self._fatal is not None:
            raise self._fatal

    def _loop(self) -> None:
        backoff = 0.0
        while self.alive:
            try:
                self.process_batch()
                backoff = 0.0
            except DatabaseError as exc:
                backoff = min(max(backoff * 2, 0.25), 10.0)
                logger.warning(
                    "event=database_error worker=%s error=%r retry_in=%.2fs",
                    self.worker_id,
                    str(exc),
                    backoff,
                )
                self._close_connection()
                self._stop_requested.wait(backoff)

    def process_batch(self) -> None:
        """Enqueue due ticks, seal and start retention when due; record the last batch's outcomes and claim the next batch, then run it."""
        self._enqueue_due_ticks()  # a comparison of the clock unless a tick is due
        self._seal_if_due()  # likewise
        self._retain_if_due()  # likewise; the run itself is a thread of its own
        self._release_unstarted(overdue_only=False)  # left over when a release failed
        jobs = self._claim()
        self._run_after_hooks()  # of outcomes a failed flush left to the claim
        if not jobs:
            if not self.burst:
                self._wait_for_work()
            elif not expire_leases(self.worker_id, using=self.using):
                # Nothing ready and no job left behind by a dead worker: done.
                self.alive = False
            return
        with self._lock:
            self._unstarted, self._batch_started, self._batch_ran = jobs, time.monotonic(), 0
        while self.alive and (job := self._next_unstarted()) is not None:
            self._run_one(job)
        self._release_unstarted(overdue_only=False)
        self._adapt_batch_size(time.monotonic() - self._batch_started)

    def _run_one(self, job: Job) -> None:
        self._run_claimed(job)
        if self.rate_limit_in_seconds and self.alive:
            self._flush()
            self._stop_requested.wait(self.rate_limit_in_seconds)

    def _run_claimed(self, job: Job) -> Outcome:
        """Run a held job's next task and hooks; the outcome is left pending (a failure's recorded)."""
        if job._dbq_came_back:
            # Should this job kill the worker, the database blames the first
            # job of the batch still held: make that this one, not a finished
            # job whose outcome waits for the next claim, nor one whose outcome
            # the heartbeat is sending right now (_flush waits for that send).
            self._flush()
        self.current_job = job
        logger.info(
            "event=started job=%s name=%r queue=%r task=%s attempt=%s worker=%s",
            job.pk,
            job.name,
            job.queue_name,
            job.next_task,
            job.attempts + 1,
            self.worker_id,
        )
        outcome = run_task(job, self.worker_id)
        if self._signalled:
            self._record_stopping_now()
        self.current_job = None
        with self._lock:
            if not self._pending:
                self._pending_since = time.monotonic()
                self._wake.set()  # the heartbeat watches how long it waits
            self._pending.append(outcome)
        self.jobs_run += 1
        if outcome.fatal is not None:
            self._fatal, self.alive = outcome.fatal, False
        if self.max_jobs is not None and self.jobs_run >= self.max_jobs:
            self.alive = False
        if outcome.after is not None:
            # A failure's hooks wait for its event: recorded now, not with the next claim.
            self._awaiting_record.append(outcome)
            self._flush()
            self._run_after_hooks()
        return outcome

    def _record_stopping_now(self) -> None:
        """After a signal in the task: `stopping` before its outcome, unless the heartbeat sent it."""
        try:
            self._record_stopping()
        except DatabaseError as exc:
            # The outcome matters more: it is still recorded.
            logger.warning(
                "event=database_error worker=%s error=%r while=stopping", self.worker_id, str(exc)
            )
            self._close_connection()

    def _finish(self) -> None:
        """On the way out: give back unstarted jobs and record what finished."""
        for attempt in range(3):
            try:
                # No outcome is in flight meanwhile: what is still held was not run.
                with self._sending:
                    self._flush()
                    with self._lock:
                        unstarted = list(self._held.values())
                    if unstarted:
                        self._release(unstarted)
                self._run_after_hooks()
                return
            except DatabaseError as exc:
                logger.warning(
                    "event=database_error worker=%s error=%r while=finishing",
                    self.worker_id,
                    str(exc),
                )
                self._close_connection()
                time.sleep(0.5 * (attempt + 1))
