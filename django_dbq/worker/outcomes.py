"""Outcomes of finished tasks: kept pending, recorded in one statement, then settled."""

from __future__ import annotations

import logging
import time
import uuid

from django.db import DatabaseError

from django_dbq.events.claims import append_held, save_failed
from django_dbq.projections.models import Job
from django_dbq.projections.writes import mark_recorded
from django_dbq.runner import Outcome
from django_dbq.worker.state import WorkerState

logger = logging.getLogger("django_dbq.worker")

# A finished task's outcome waits at most about this long for the rest of its
# batch: past it, while another task of the batch still runs, the heartbeat
# records what is pending, so that a slow job does not hold the outcomes of
# the fast ones before it (which a crash would make run again).
RECORD_WITHIN_SECONDS = 0.1


class Outcomes(WorkerState):
    """Taking, sending, putting back and settling the pending outcomes."""

    def _flush(self, wait: bool = True) -> None:
        """Record the outcomes of finished jobs in one statement (unless another thread is)."""
        if not self._sending.acquire(blocking=wait):
            return
        try:
            outcomes = self._take_pending()
            if not outcomes:
                return
            events = [(o.job.pk, o.kind, o.payload) for o in outcomes]
            try:
                recorded = append_held(self._key, events, using=self.using)
            except DatabaseError:
                self._put_back(outcomes)
                raise
            self._settle(outcomes, recorded)
        finally:
            self._sending.release()

    def _take_pending(self) -> list[Outcome]:
        """The outcomes waiting to be recorded, taken so that no other thread sends them too."""
        with self._lock:
            outcomes, self._pending = self._pending, []
            return outcomes

    def _put_back(self, outcomes: list[Outcome]) -> None:
        with self._lock:
            self._pending[:0] = outcomes

    def _flush_if_waiting_long(self) -> None:
        """From the heartbeat: record outcomes that have waited on a running task too long."""
        with self._lock:
            waiting = bool(self._pending) and self.current_job is not None
            overdue = time.monotonic() - self._pending_since >= RECORD_WITHIN_SECONDS
        if waiting and overdue:
            self._flush(wait=False)

    def _settle(self, outcomes: list[Outcome], recorded: set[uuid.UUID]) -> None:
        """Forget recorded outcomes; warn about those whose job this worker no longer held."""
        with self._lock:
            for outcome in outcomes:
                self._held.pop(outcome.job.pk, None)
        for outcome in outcomes:
            job = outcome.job
            outcome.recorded = job.pk in recorded
            if outcome.recorded:
                # No longer held: a save from a hook now is an application's save.
                job.__dict__.pop("_dbq_key", None)
                logger.info(
                    "event=%s job=%s name=%r state=%s next_task=%s worker=%s",
                    outcome.kind,
                    job.pk,
                    job.name,
                    job.state,
                    job.next_task or "none",
                    self.worker_id,
                )
            else:
                # The lease ran out before the outcome was recorded; the job went back
                # to its queue (lease_expired) and this outcome is dropped.
                logger.warning(
                    "event=lease_lost job=%s outcome=%s worker=%s",
                    job.pk,
                    outcome.kind,
                    self.worker_id,
                )

    def _run_after_hooks(self) -> None:
        """In the loop: the hooks that waited for their outcome to be settled (a failure's)."""
        settled = [o for o in self._awaiting_record if o.recorded is not None]
        if settled:
            self._awaiting_record = [o for o in self._awaiting_record if o.recorded is None]
            for outcome in settled:
                changes = outcome.after(outcome.recorded)
                if changes is not None:
                    self._save_failed(outcome.job, changes)

    def _save_failed(self, job: Job, changes: str) -> None:
        """Record what a failure's hooks changed in its job; the failure stands if this fails."""
        try:
            saved = save_failed(self._key, [(job.pk, "updated", changes)], using=self.using)
        except DatabaseError as exc:
            logger.warning(
                "event=database_error worker=%s error=%r while=saving_failed_job job=%s",
                self.worker_id,
                str(exc),
                job.pk,
            )
            return
        if not saved:
            # Something happened to the job since its failure (a requeue, a save).
            logger.warning(
                "event=hook_changes_not_recorded job=%s worker=%s", job.pk, self.worker_id
            )
            return
        (appended,) = saved
        mark_recorded(job, self.using, version=appended.version, at=appended.at)
