"""Re-exports, so that ``from django_dbq.models import Job`` keeps working."""

from django_dbq.events.models import EventKind, JobEvent
from django_dbq.projections.models import Job

__all__ = ["EventKind", "Job", "JobEvent"]
