"""Waiting for work: LISTEN on the channel until a notification names the queue or a job is due."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from django.db import DatabaseError, connections

from django_dbq import conf
from django_dbq.events.claims import seconds_until_due
from django_dbq.worker.state import WorkerState

logger = logging.getLogger("django_dbq.worker")

NOTIFY_CHANNEL = "django_dbq"


class Waiting(WorkerState):
    """How an idle worker sleeps and what wakes it."""

    def _wait_for_work(self) -> None:
        """Sleep until a notification names this queue, a scheduled job or a periodic job's
        tick is due, or the poll interval."""
        timeout = min(conf.poll_seconds(), max(self._next_tick_at - time.time(), 0.0))
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

    def _stop_listening(self) -> None:
        """UNLISTEN on a pooled connection, which the pool would hand to its next user still listening."""
        wrapper = connections[self.using]
        listening, self._listening = self._listening, None
        if listening is None or listening is not wrapper.connection or wrapper.pool is None:
            return
        try:
            with wrapper.cursor() as cursor:
                cursor.execute(f"UNLISTEN {NOTIFY_CHANNEL}")
        except DatabaseError:
            # Perhaps still listening: closed for good, so that the pool replaces it.
            listening.close()

    def _close_connection(self) -> None:
        """Close the loop's connection (under Django's pool: give it back, without its LISTEN)."""
        self._stop_listening()
        connections[self.using].close()
