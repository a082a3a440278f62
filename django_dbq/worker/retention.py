"""Retention in the worker: delete_old_jobs on a schedule, without cron.

With settings.DBQ_RETENTION_HOURS set, each worker runs Job.objects.delete_old(
hours=DBQ_RETENTION_HOURS) every DBQ_RETENTION_SECONDS (default 3600; workers
started together spread their runs over the interval), in a thread of its own
with its own connection, so the worker's jobs go on meanwhile. The run goes in
batches of DBQ_RETENTION_BATCH jobs, each its own transaction; two workers whose
runs meet wait for each other's batch and find its jobs gone. A role that may not
run retention (the worker role of ledger_grants) is told once in the log, and the
worker does not try again.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.db import connections
from django.utils import timezone

from django_dbq.events.append import delete_old_jobs
from django_dbq.worker.state import WorkerState

logger = logging.getLogger("django_dbq.worker")

DEFAULT_RETENTION_SECONDS = 3600.0
INSUFFICIENT_PRIVILEGE = "42501"


def retention_hours() -> float | None:
    """settings.DBQ_RETENTION_HOURS: how old finished jobs the workers delete (None: they do not)."""
    hours = getattr(settings, "DBQ_RETENTION_HOURS", None)
    return None if hours is None else float(hours)


def retention_seconds() -> float:
    """settings.DBQ_RETENTION_SECONDS: how often each worker runs retention (default 3600)."""
    return float(getattr(settings, "DBQ_RETENTION_SECONDS", DEFAULT_RETENTION_SECONDS))


class _Stopped(Exception):
    """The worker stops: the retention run ends after its current batch."""


class Retention(WorkerState):
    """When the worker runs retention next, and the thread that runs it."""

    _next_retention_at: float | None = None
    _retention_thread: threading.Thread | None = None

    def _retain_if_due(self) -> None:
        """Start a retention run in the background when it is time and none runs."""
        now = time.time()
        if self._next_retention_at is None:
            self._next_retention_at = self._plan_retention(now, first=True)
        if now < self._next_retention_at:
            return
        if self._retention_thread is not None and self._retention_thread.is_alive():
            return
        self._next_retention_at = self._plan_retention(now)
        self._retention_thread = threading.Thread(
            target=self._run_retention, name="dbq-retention", daemon=True
        )
        self._retention_thread.start()

    def _plan_retention(self, now: float, first: bool = False) -> float:
        try:
            hours, seconds = retention_hours(), retention_seconds()
        except (TypeError, ValueError) as exc:
            logger.warning("event=retention_error worker=%s error=%r", self.worker_id, str(exc))
            return float("inf")
        if hours is None or seconds <= 0:
            return float("inf")
        # Spread over the interval: workers started together do not all run at once.
        return now + seconds * random.uniform(0.0 if first else 0.5, 1.0)

    def _run_retention(self) -> None:
        hours = retention_hours()  # not None: the run was planned
        started = time.monotonic()

        def progress(deleted: int, batches: int) -> None:
            if not self.alive:
                raise _Stopped

        try:
            deleted = delete_old_jobs(
                timezone.now() - timedelta(hours=hours), using=self.using, progress=progress
            )
        except _Stopped:
            logger.info("event=retention_stopped worker=%s", self.worker_id)
        except Exception as exc:  # noqa: BLE001 (the thread logs what it meets and ends)
            hint = ""
            if getattr(exc.__cause__, "sqlstate", None) == INSUFFICIENT_PRIVILEGE:
                hint = (
                    "DBQ_RETENTION_HOURS needs a role that may run retention (ledger_grants "
                    "--maintenance); this worker will not try again"
                )
                self._next_retention_at = float("inf")
            logger.warning(
                "event=retention_error worker=%s error=%r%s",
                self.worker_id,
                str(exc) or repr(exc),
                f" hint={hint!r}" if hint else "",
            )
        else:
            logger.info(
                "event=retention worker=%s deleted=%s hours=%s seconds=%.3f",
                self.worker_id,
                deleted,
                hours,
                time.monotonic() - started,
            )
        finally:
            connections[self.using].close()
