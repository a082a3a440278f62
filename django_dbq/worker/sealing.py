"""Sealing in the worker: a seal of the ledger every DBQ_SEAL_SECONDS (django_dbq/seals.py).

Every worker seals when settings.DBQ_LEDGER_KEY is set; the database lets
sealers follow each other, and a seal that finds nothing new appends nothing,
so no worker leads. The loop compares the clock with the next seal's time
before each claim, which costs no query.
"""

from __future__ import annotations

import logging
import random
import time

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError

from django_dbq.seals import WORKER_WAIT_MS, ledger_key, seal_ledger, seal_seconds
from django_dbq.worker.state import WorkerState

logger = logging.getLogger("django_dbq.worker")

# How long a worker waits before it tries again a seal the database refused.
RETRY_SECONDS = 5.0
LOCK_NOT_AVAILABLE = "55P03"


class Sealing(WorkerState):
    """When the worker seals the ledger next (never without a key or with DBQ_SEAL_SECONDS 0)."""

    _next_seal_at: float | None = None

    def _seal_if_due(self) -> None:
        """Seal the ledger when it is time; a refusal is logged and tried again later."""
        now = time.time()
        if self._next_seal_at is None:
            self._next_seal_at = self._plan_seal(now)
        if now < self._next_seal_at:
            return
        self._next_seal_at = self._plan_seal(now)
        try:
            sealed = seal_ledger(using=self.using, wait_ms=WORKER_WAIT_MS)
        except DatabaseError as exc:
            if getattr(exc.__cause__, "sqlstate", None) == LOCK_NOT_AVAILABLE:
                # Another sealer, or appends that outlast the wait: next turn.
                logger.info("event=seal_busy worker=%s error=%r", self.worker_id, str(exc))
                return
            self._seal_failed(now, exc)
            return
        except ImproperlyConfigured as exc:
            self._seal_failed(now, exc)
            return
        if sealed is not None:
            logger.info(
                "event=ledger_sealed seal=%s events=%s total_events=%s worker=%s",
                sealed.id,
                sealed.events,
                sealed.total_events,
                self.worker_id,
            )

    def _seal_failed(self, now: float, exc: Exception) -> None:
        logger.warning(
            "event=seal_error worker=%s error=%r retry_in=%ss",
            self.worker_id,
            str(exc),
            RETRY_SECONDS,
        )
        self._next_seal_at = now + RETRY_SECONDS

    def _plan_seal(self, now: float) -> float:
        try:
            seconds = seal_seconds()
            key = ledger_key()
        except (ImproperlyConfigured, TypeError, ValueError) as exc:
            logger.warning("event=seal_error worker=%s error=%r", self.worker_id, str(exc))
            return float("inf")
        if seconds <= 0 or key is None:
            return float("inf")
        # Workers started together spread their seals over the interval.
        return now + seconds * random.uniform(0.5, 1.0)
