"""Pausing and resuming queues, recorded in the queue ledger (django_dbq_queueevent).

A paused queue keeps taking jobs, but no worker claims from it: the claim
functions read django_dbq_queue, the ledger's projection, at every claim, so a
pause holds for every worker (of a release that claims with them) across
restarts. Resuming wakes the queue's idle workers. Pausing a paused queue, or
resuming one that is not paused, records nothing and returns False.
"""

from __future__ import annotations

import getpass
import socket

from django.db import DEFAULT_DB_ALIAS, connections

from django_dbq.exceptions import InvalidQueueError
from django_dbq.projections.models import QUEUE_NAME_LENGTH, Queue
from django_dbq.sqlfiles import bind, load_queries

__all__ = ["default_by", "pause_queue", "paused_queues", "resume_queue"]

REASON_LENGTH = 1000
BY_LENGTH = 200


def pause_queue(
    name: str, reason: str = "", by: str | None = None, using: str = DEFAULT_DB_ALIAS
) -> bool:
    """Pause a queue until resume_queue(); False (and nothing recorded) when it is paused already.

    `by` is who pauses it (the commands pass the OS user and host, the admin
    its user); the database records its own session user beside it.
    """
    _check(name, reason, by)
    return _append("queues_pause", {"queue_name": name, "reason": reason, "by": by}, using)


def resume_queue(name: str, by: str | None = None, using: str = DEFAULT_DB_ALIAS) -> bool:
    """Resume a paused queue, waking its idle workers; False (nothing recorded) when it was not paused."""
    _check(name, "", by)
    return _append("queues_resume", {"queue_name": name, "by": by}, using)


def paused_queues(using: str = DEFAULT_DB_ALIAS) -> dict[str, Queue]:
    """The paused queues by name, each with its reason, `by`, role and `since`."""
    return {queue.name: queue for queue in Queue.objects.using(using).filter(paused=True)}


def default_by() -> str:
    """Who an operator's command says it is: the OS user at the host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (a container's)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:BY_LENGTH]


def _append(query: str, params: dict[str, str | None], using: str) -> bool:
    with connections[using].cursor() as cursor:
        cursor.execute(*bind(load_queries("django_dbq.events")[query], params))
        return cursor.fetchone() is not None


def _check(name: object, reason: object, by: object) -> None:
    """Raise InvalidQueueError unless the values fit the queue ledger (the database checks too)."""
    if not isinstance(name, str) or not 1 <= len(name) <= QUEUE_NAME_LENGTH:
        shown = f"{name[:30]!r} ({len(name)} characters)" if isinstance(name, str) else repr(name)
        raise InvalidQueueError(
            f"A queue name is a string of 1 to {QUEUE_NAME_LENGTH} characters (as Job.queue_name), "
            f"not {shown}."
        )
    if not isinstance(reason, str) or len(reason) > REASON_LENGTH:
        raise InvalidQueueError(
            f"A pause's reason is a string of at most {REASON_LENGTH} characters."
        )
    if by is not None and (not isinstance(by, str) or len(by) > BY_LENGTH):
        raise InvalidQueueError(f"`by` is a string of at most {BY_LENGTH} characters, or None.")
