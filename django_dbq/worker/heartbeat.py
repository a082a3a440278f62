"""The heartbeat thread: renews leases, expires lapsed ones, releases an overdue batch.

It also records outcomes that have waited on a running task for longer than
RECORD_WITHIN_SECONDS, and `stopping` for the running job once a signal arrived.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

from django.db import DatabaseError, connections

from django_dbq import conf
from django_dbq.events.claims import expire_leases, renew_leases
from django_dbq.worker.batch import Batches
from django_dbq.worker.outcomes import RECORD_WITHIN_SECONDS
from django_dbq.worker.signals import SignalHandling

logger = logging.getLogger("django_dbq.worker")


class Heartbeat(Batches, SignalHandling):
    """The heartbeat thread that `Worker.run` and `Worker._process_job` run."""

    @contextlib.contextmanager
    def _beating(self) -> Iterator[None]:
        """Run the heartbeat thread for the duration of the block."""
        previous = self._heartbeat_thread
        if previous is not None and previous.is_alive():
            # One that outlived its block (a slow statement): never two at once.
            previous.join()
        self._stopped.clear()
        thread = threading.Thread(target=self._heartbeat, name="dbq-heartbeat", daemon=True)
        self._heartbeat_thread = thread
        thread.start()
        try:
            yield
        finally:
            self._stopped.set()
            self._wake.set()
            thread.join(timeout=10)

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
                    self._exit_if_grace_is_over()
                    self._release_unstarted(overdue_only=True)
                    now = time.monotonic()
                    if now - last_renewal >= renew_every:
                        with self._lock:
                            held = list(self._held)
                        renew_leases(self._key, held, self.lease_seconds, using=self.using)
                        last_renewal = now
                    if now - last_expiry >= expire_every:
                        last_expiry = now
                        for job_id, kind in expire_leases(self.worker_id, using=self.using):
                            # retried or failed: the job its lost worker ran (WorkerLost).
                            event = "lease_expired" if kind == "lease_expired" else "worker_lost"
                            logger.warning(
                                "event=%s job=%s outcome=%s noticed_by=%s",
                                event,
                                job_id,
                                kind,
                                self.worker_id,
                            )
                except DatabaseError as exc:
                    logger.warning(
                        "event=database_error worker=%s error=%r while=heartbeat",
                        self.worker_id,
                        str(exc),
                    )
                    connections[self.using].close()
                except Exception:
                    # Whatever went wrong, the leases must go on being renewed.
                    logger.exception("event=heartbeat_error worker=%s", self.worker_id)
        finally:
            connections[self.using].close()
