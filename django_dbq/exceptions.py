"""Errors raised by django-dbq, each naming the problem and the fix."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError


class DbqError(Exception):
    """Base class of django-dbq errors."""


class JobConfigError(DbqError, ValueError):
    """settings.JOBS does not describe the job that was asked for."""


class UnknownJobError(JobConfigError):
    """A job name that settings.JOBS does not define."""


class InvalidJobError(DbqError, ValueError):
    """A job field holds a value the queue cannot store."""


class ProjectionWriteError(DbqError, RuntimeError):
    """A direct write to the Job projection, which only the ledger trigger may write."""


class JobGoneError(DbqError, LookupError):
    """An event was appended for a job that is not in the projection."""


class WorkerLost(DbqError):
    """The worker running a job was lost (its process died or lost the database).

    Never raised: the name of the error a `retried` or `failed` event carries when
    a lost worker's job counts an attempt (see django_dbq.retries).
    """


class MigrationHistoryError(DbqError, CommandError):
    """django_migrations and the tables disagree on which of django_dbq's migrations ran.

    A CommandError, so that ``manage.py migrate`` prints the message (which says what
    to record) without a traceback.
    """


class InvalidQueueError(DbqError, ValueError):
    """A queue name, pause reason or `by` that the queue ledger cannot store."""


class DuplicateJobError(DbqError):
    """A job with this unique key already waits or runs, so no second one was made.

    `.job` is that job (None if it finished in the meantime), `.unique_key` the key.
    """

    def __init__(self, message: str, job: Any = None, unique_key: str | None = None) -> None:
        super().__init__(message)
        self.job = job
        self.unique_key = unique_key
