"""The worker: claims ready jobs by appending events, runs their tasks, records outcomes.

One loop iteration records the outcomes of the last batch and claims the next batch
(one round trip), then runs each job's next task with its hooks. The batch starts at
one job and doubles while batches finish quickly, so fast jobs are claimed many at a
time; a slow job does not hold the rest of its batch back: once the batch's time is
up, the jobs it has not started are released, by the heartbeat thread if the loop
is inside a long task. The heartbeat also renews the leases of held jobs, returns
jobs whose lease ran out to their queue, and records `stopping` when a signal arrives.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from typing import Any

import orjson
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from django_dbq import conf, jsonutil, tasks
from django_dbq.clock import from_epoch
from django_dbq.events.claims import (
    CLAIM_FIELDS,
    append_held,
    expire_leases,
    new_worker_key,
    record_and_claim,
    renew_leases,
    seconds_until_due,
)
from django_dbq.projections.models import Job
from django_dbq.projections.writes import remember_loaded
from django_dbq.runner import Outcome, run_task

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL = "django_dbq"
# A finished task's outcome waits at most about this long for the rest of its
# batch: past it, while another task of the batch still runs, the heartbeat
# records what is pending, so that a slow job does not hold the outcomes of
# the fast ones before it (which a crash would make run again).
RECORD_WITHIN_SECONDS = 0.1
_TIME_COLUMNS = [CLAIM_FIELDS.index(name) for name in ("created", "modified", "lease_until")]
_WORKSPACE = CLAIM_FIELDS.index("workspace")


class Worker:
    """A worker for one queue; `run()` processes jobs until told to stop."""

    def __init__(
        self,
        name: str = "default",
        rate_limit_in_seconds: float = 0,
        *,
        burst: bool = False,
        max_jobs: int | None = None,
        using: str = DEFAULT_DB_ALIAS,
        handle_signals: bool = True,
    ) -> None:
        self.queue_name = name
        self.rate_limit_in_seconds = rate_limit_in_seconds
        self.burst = burst
        self.max_jobs = max_jobs
        self.using = using
        self.alive = True
        self.current_job: Job | None = None
        self.jobs_run = 0
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.worker_id = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        # Proves this worker's claims to the database; never logged or stored.
        self._key = new_worker_key()
        self.lease_seconds = conf.lease_seconds()
        self._held: dict[uuid.UUID, Job] = {}
        self._pending: list[Outcome] = []
        self._pending_since = 0.0
        self._lock = threading.Lock()
        # Held while outcomes are sent and settled, so that the loop and the
        # heartbeat never send at once, and the jobs of outcomes in flight are
        # not released as unstarted when the worker stops.
        self._sending = threading.RLock()
        # _wake rouses the heartbeat (which clears it); _stop_requested ends the
        # loop's own waits and stays set.
        self._wake = threading.Event()
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()
        self._unstarted: list[Job] = []
        self._batch_started = 0.0
        self._batch_ran = 0
        self._signalled = False
        self._stopping_sent: set[uuid.UUID] = set()
        self._batch_size = 1
        self._fatal: BaseException | None = None
        self._listening: Any = None
        # A program that embeds the worker may keep its own signal handlers.
        if handle_signals and threading.current_thread() is threading.main_thread():
            self.init_signals()

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
        self.alive = False
        self._stop_requested.set()
        self._wake.set()

    def run(self) -> None:
        """Process jobs until stopped (or, with burst, until none is ready)."""
        heartbeat = threading.Thread(target=self._heartbeat, name="dbq-heartbeat", daemon=True)
        heartbeat.start()
        backoff = 0.0
        try:
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
                    connections[self.using].close()
                    self._stop_requested.wait(backoff)
        finally:
            self._finish()
            self._stopped.set()
            self._wake.set()
            heartbeat.join(timeout=10)
        if self._fatal is not None:
            raise self._fatal

    def process_batch(self) -> None:
        """Record the last batch's outcomes and claim the next batch, then run it."""
        self._release_unstarted(overdue_only=False)  # left over when a release failed
        jobs = self._claim()
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
        job._state.adding = False
        job._state.db = self.using
        remember_loaded(job, CLAIM_FIELDS, workspace_text=text)
        job._dbq_prior_state = row[len(CLAIM_FIELDS)]
        # The task's job.save() proves the claim with it (writes.record_changes).
        job.__dict__["_dbq_key"] = self._key
        return job

    def _run_one(self, job: Job) -> None:
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
        if self.rate_limit_in_seconds and self.alive:
            self._flush()
            self._stop_requested.wait(self.rate_limit_in_seconds)

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
            if job.pk in recorded:
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

    def _wait_for_work(self) -> None:
        """Sleep until a notification names this queue, a scheduled job is due, or the poll interval."""
        timeout = conf.poll_seconds()
        due = seconds_until_due(self.queue_name, using=self.using)
        if due is not None:
            timeout = min(timeout, max(due, 0.0))
        pgconn = self._listen()
        deadline = time.monotonic() + timeout
        while self.alive and (remaining := deadline - time.monotonic()) > 0:
            for note in pgconn.notifies(timeout=remaining, stop_after=1):
                if self._names_queue(note.payload):
                    return

    def _names_queue(self, payload: str) -> bool:
        """Whether a notification wakes this worker: '*' or a JSON array naming its queue.

        Anyone may NOTIFY on the channel; what is not ours is logged and ignored.
        """
        if payload == "*":
            return True
        try:
            queues = orjson.loads(payload)
        except orjson.JSONDecodeError:
            queues = None
        if not isinstance(queues, list):
            logger.warning(
                "event=bad_notification payload=%r worker=%s", payload[:200], self.worker_id
            )
            return False
        return self.queue_name in queues

    def _listen(self) -> Any:
        wrapper = connections[self.using]
        wrapper.ensure_connection()
        if self._listening is not wrapper.connection:
            with wrapper.cursor() as cursor:
                cursor.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self._listening = wrapper.connection
        return wrapper.connection

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
                return
            except DatabaseError as exc:
                logger.warning(
                    "event=database_error worker=%s error=%r while=finishing",
                    self.worker_id,
                    str(exc),
                )
                connections[self.using].close()
                time.sleep(0.5 * (attempt + 1))

    def _heartbeat(self) -> None:
        """Renew leases, expire lapsed leases, release an overdue batch, record `stopping`."""
        renew_every = self.lease_seconds / 3
        expire_every = min(renew_every, 5.0)
        last_renewal = last_expiry = time.monotonic()
        try:
            while not self._stopped.is_set():
                # Wakes at the batch's pace to release an overdue batch, and
                # sooner while outcomes wait on a running task; the queries
                # below run at their own intervals.
                pace = min(expire_every, conf.batch_seconds())
                if self._pending:
                    pace = min(pace, RECORD_WITHIN_SECONDS)
                self._wake.wait(pace)
                self._wake.clear()
                if self._stopped.is_set():
                    return
                try:
                    self._flush_if_waiting_long()
                    self._record_stopping()
                    self._release_unstarted(overdue_only=True)
                    now = time.monotonic()
                    if now - last_renewal >= renew_every:
                        with self._lock:
                            held = list(self._held)
                        renew_leases(self._key, held, self.lease_seconds, using=self.using)
                        last_renewal = now
                    if now - last_expiry >= expire_every:
                        last_expiry = now
                        for job_id in expire_leases(self.worker_id, using=self.using):
                            logger.warning(
                                "event=lease_expired job=%s noticed_by=%s", job_id, self.worker_id
                            )
                except DatabaseError as exc:
                    logger.warning(
                        "event=database_error worker=%s error=%r while=heartbeat",
                        self.worker_id,
                        str(exc),
                    )
                    connections[self.using].close()
        finally:
            connections[self.using].close()

    def _record_stopping(self) -> None:
        job = self.current_job
        if self.alive or job is None or job.pk in self._stopping_sent:
            return
        self._stopping_sent.add(job.pk)
        payload = jsonutil.dumps({"worker": self.worker_id})
        append_held(self._key, [(job.pk, "stopping", payload)], using=self.using)
        job.state = Job.STATES.STOPPING
        logger.info("event=stopping job=%s worker=%s", job.pk, self.worker_id)
