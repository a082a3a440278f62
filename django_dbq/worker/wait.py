"""Waiting for work: LISTEN on the channel until a notification names the queue or a job is due."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from django.db import connections

from django_dbq import conf
from django_dbq.events.claims import seconds_until_due
from django_dbq.worker.state import WorkerState

logger = logging.getLogger("django_dbq.worker")

NOTIFY_CHANNEL = "django_dbq"


class Waiting(WorkerState):
    """How an idle worker sleeps and what wakes it."""

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
