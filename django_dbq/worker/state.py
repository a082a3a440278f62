"""What a worker's loop and its heartbeat thread share, and the locks that guard it.

The loop (loop.py) runs jobs; the heartbeat thread (heartbeat.py) renews leases,
releases an overdue batch and records outcomes that wait too long. `_lock` guards
the lists and times both of them change; `_sending` is held while outcomes are
sent and settled. The mixins of `Worker` all work on this one state.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from datetime import datetime
from typing import Any

from django_dbq import conf
from django_dbq.events.claims import new_worker_key
from django_dbq.projections.models import Job
from django_dbq.runner import Outcome


class WorkerState:
    """A worker's identity, settings and the state its loop and heartbeat share."""

    def __init__(
        self,
        name: str,
        rate_limit_in_seconds: float,
        *,
        burst: bool,
        max_jobs: int | None,
        using: str,
    ) -> None:
        self.queue_name = name
        self.rate_limit_in_seconds = rate_limit_in_seconds
        self.burst = burst
        self.max_jobs = max_jobs
        self.using = using
        self.alive = True
        self.current_job: Job | None = None
        # When process_job (django-db-queue 3.3's step) last ran a job; run() leaves it.
        self.last_job_finished: datetime | None = None
        self.jobs_run = 0
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.worker_id = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        # Proves this worker's claims to the database; never logged or stored.
        self._key = new_worker_key()
        self.lease_seconds = conf.lease_seconds()
        self._held: dict[uuid.UUID, Job] = {}
        self._pending: list[Outcome] = []
        # Recorded or not yet, outcomes whose hooks wait for that (a failure's).
        self._awaiting_record: list[Outcome] = []
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
        self._signalled_at = 0.0
        self._stopping_sent: set[uuid.UUID] = set()
        # Held while `stopping` is recorded, so that the loop, which records it
        # itself when the heartbeat has not yet, never sends it twice or after
        # the job's outcome.
        self._stopping_lock = threading.Lock()
        self._heartbeat_thread: threading.Thread | None = None
        self._batch_size = 1
        self._fatal: BaseException | None = None
        self._listening: Any = None
        # Epoch seconds of the next tick of a periodic job (schedules.py; inf:
        # none), which ends the idle wait; 0 until the schedules are read.
        self._next_tick_at = 0.0
