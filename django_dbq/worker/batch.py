"""Batches: claiming the next jobs, handing out the unstarted ones, releasing the rest, sizing.

The batch starts at one job and doubles while batches finish quickly, so fast jobs
are claimed many at a time; once a batch's time is up, the jobs it has not started
are released, by the heartbeat thread if the loop is inside a long task.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from django.db import DatabaseError

from django_dbq import conf, jsonutil, tasks
from django_dbq.clock import from_epoch
from django_dbq.events.claims import CLAIM_FIELDS, append_held, record_and_claim
from django_dbq.projections.models import Job
from django_dbq.projections.writes import remember_loaded
from django_dbq.worker.outcomes import Outcomes

logger = logging.getLogger("django_dbq.worker")

_TIME_COLUMNS = [CLAIM_FIELDS.index(name) for name in ("created", "modified", "lease_until")]
_WORKSPACE = CLAIM_FIELDS.index("workspace")


class Batches(Outcomes):
    """The batch of claimed jobs (its claim also records the last batch's outcomes)."""

    def _next_unstarted(self) -> Job | None:
        """The batch's next job, unless the batch is out of time after its first job."""
        with self._lock:
            if not self._unstarted or (self._batch_ran and self._batch_overdue()):
                return None
            self._batch_ran += 1
            return self._unstarted.pop(0)

    def _batch_overdue(self) -> bool:
        return time.monotonic() - self._batch_started > conf.batch_seconds()

    def _release_unstarted(self, overdue_only: bool) -> None:
        """Give back the batch's jobs not started yet (from the heartbeat: once it is overdue)."""
        with self._lock:
            if overdue_only and not self._batch_overdue():
                return
            jobs, self._unstarted = self._unstarted, []
        if jobs:
            try:
                self._release(jobs)
            except DatabaseError:
                with self._lock:  # still claimed: the loop may run them after all
                    self._unstarted[:0] = jobs
                raise

    def _claim(self) -> list[Job]:
        limit = 1 if self.rate_limit_in_seconds else self._batch_size
        if self.max_jobs is not None:
            limit = min(limit, self.max_jobs - self.jobs_run)
        if limit <= 0:
            self._flush()
            return []
        return self._claim_up_to(limit)

    def _claim_up_to(self, limit: int) -> list[Job]:
        """Record the pending outcomes and claim up to `limit` jobs, now held."""
        # The outcomes of the batch just run go in the same round trip and commit.
        with self._sending:
            rows = self._record_and_claim(limit)
        jobs = [self._job_from_row(row) for row in rows]
        with self._lock:
            self._held.update((job.pk, job) for job in jobs)
        return jobs

    def _record_and_claim(self, limit: int) -> list[tuple[Any, ...]]:
        """Send the pending outcomes and claim the next batch; return the claimed rows."""
        outcomes = self._take_pending()
        try:
            recorded, rows = record_and_claim(
                self.worker_id,
                self._key,
                [(o.job.pk, o.kind, o.payload) for o in outcomes],
                self.queue_name,
                limit,
                self.host,
                self.pid,
                self.lease_seconds,
                using=self.using,
                names=tasks.known_job_names(),
            )
        except DatabaseError:
            self._put_back(outcomes)
            raise
        self._settle(outcomes, recorded)
        return rows

    def _job_from_row(self, row: tuple[Any, ...]) -> Job:
        values = list(row[: len(CLAIM_FIELDS)])
        for index in _TIME_COLUMNS:
            values[index] = from_epoch(values[index])
        text = values[_WORKSPACE]
        if isinstance(text, (str, bytes)):
            values[_WORKSPACE] = orjson.loads(text)
        # As Model.from_db does, but the workspace is remembered as the text read,
        # so save() can tell what a task changed without encoding it for every job.
        job = Job(*values)
        # Not among the claim's columns: read from the projection if a task asks.
        del job.__dict__["unique_key"]
        job._state.adding = False
        job._state.db = self.using
        remember_loaded(job, CLAIM_FIELDS, workspace_text=text)
        job._dbq_prior_state = row[len(CLAIM_FIELDS)]
        # Back from a lost worker or a failed attempt: it may take this worker
        # down too (see Worker._run_one).
        job._dbq_came_back = row[len(CLAIM_FIELDS) + 1] in ("lease_expired", "retried")
        # The task's job.save() proves the claim with it (writes.record_changes).
        job.__dict__["_dbq_key"] = self._key
        return job

    def _release(self, jobs: list[Job]) -> None:
        """Give back claimed jobs that were not started."""
        events = [
            (
                job.pk,
                "released",
                jsonutil.dumps({"worker": self.worker_id, "state": job._dbq_prior_state}),
            )
            for job in jobs
        ]
        for job_id in append_held(self._key, events, using=self.using):
            logger.info("event=released job=%s worker=%s", job_id, self.worker_id)
        with self._lock:
            for job in jobs:
                self._held.pop(job.pk, None)

    def _adapt_batch_size(self, elapsed: float) -> None:
        if elapsed < conf.batch_seconds() / 2:
            self._batch_size = min(self._batch_size * 2, conf.max_batch_size())
        elif elapsed > conf.batch_seconds():
            self._batch_size = max(1, self._batch_size // 4)
