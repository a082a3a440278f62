"""Re-exports, so that ``from django_dbq.models import Job`` keeps working.

With django-db-queue 3.3's other names of this module: the manager class and
the default age of `delete_old`.
"""

from django_dbq.events.models import (
    EventKind,
    JobEvent,
    QueueEvent,
    QueueEventKind,
    Retired,
    Schedule,
    Seal,
)
from django_dbq.projections.models import DEFAULT_DELETE_JOBS_AFTER_HOURS, Job, JobManager, Queue

__all__ = [
    "DEFAULT_DELETE_JOBS_AFTER_HOURS",
    "EventKind",
    "Job",
    "JobEvent",
    "JobManager",
    "Queue",
    "QueueEvent",
    "QueueEventKind",
    "Retired",
    "Schedule",
    "Seal",
]
