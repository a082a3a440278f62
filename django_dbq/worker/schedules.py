"""Periodic jobs in the worker: enqueueing the due ticks of settings.JOBS' schedules.

Every worker, of any queue, enqueues the ticks of every schedule; the database
lets one of them enqueue each tick (events/ticks.py), so no worker leads. The
loop compares the clock with the next tick before each claim, which costs no
query; the database is called when a tick is due, and the idle wait ends in
time for it.
"""

from __future__ import annotations

import datetime
import logging
import math
import time

from django.db import DatabaseError

from django_dbq.events.ticks import schedule_cursors
from django_dbq.exceptions import DbqError
from django_dbq.projections.writes import enqueue_ticks
from django_dbq.schedules import PeriodicJob, periodic_jobs
from django_dbq.worker.state import WorkerState

logger = logging.getLogger("django_dbq.worker")

# How long a worker waits before it tries again ticks the database refused.
RETRY_SECONDS = 5.0


class Scheduling(WorkerState):
    """The schedules a worker enqueues the ticks of, and when the next one is due."""

    # Set by the worker's constructor (worker --no-schedules: False).
    schedules_enabled = True
    _periodic: list[PeriodicJob] | None = None
    # Per schedule: the time after which its next tick is due (its last tick).
    _tick_cursors: dict[str, datetime.datetime]

    def _enqueue_due_ticks(self) -> None:
        """Enqueue the ticks that are due (the database keeps each to one job).

        A database error here is logged and the ticks are tried again a few
        seconds later: the worker goes on claiming meanwhile (a lost connection
        fails the claim, which reconnects).
        """
        if time.time() < self._next_tick_at:
            return
        try:
            if self._periodic is None:
                self._start_schedules()
            if time.time() >= self._next_tick_at:
                self._enqueue_now()
        except (DatabaseError, DbqError) as exc:
            logger.warning(
                "event=schedule_error worker=%s error=%r retry_in=%ss",
                self.worker_id,
                str(exc),
                RETRY_SECONDS,
            )
            self._next_tick_at = time.time() + RETRY_SECONDS

    def _enqueue_now(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        for job in self._periodic or ():
            ticks = job.due_ticks(self._tick_cursors[job.name], now)
            if not ticks:
                continue
            created = enqueue_ticks(job.name, [(t, job.new_job()) for t in ticks], self.using)
            self._tick_cursors[job.name] = ticks[-1]
            for tick_job in created:
                logger.info(
                    "event=tick_enqueued schedule=%r job=%s queue=%r worker=%s",
                    job.name,
                    tick_job.pk,
                    tick_job.queue_name,
                    self.worker_id,
                )
        self._plan_next_tick()

    def _start_schedules(self) -> None:
        periodic = periodic_jobs() if self.schedules_enabled else []
        self._tick_cursors = (
            schedule_cursors([j.name for j in periodic], self.using) if periodic else {}
        )
        self._periodic = periodic
        self._plan_next_tick()

    def _plan_next_tick(self) -> None:
        soonest = math.inf
        for job in self._periodic or ():
            soonest = min(soonest, job.next_tick(self._tick_cursors[job.name]).timestamp())
        self._next_tick_at = soonest
