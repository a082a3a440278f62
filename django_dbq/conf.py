"""Settings of django-dbq, read through small functions so override_settings works."""

from __future__ import annotations

from django.conf import settings


def lease_seconds() -> float:
    """How long a worker's claim on a job lasts without a heartbeat (DBQ_LEASE_SECONDS, 30)."""
    return float(getattr(settings, "DBQ_LEASE_SECONDS", 30))


def poll_seconds() -> float:
    """How long an idle worker waits for a notification before it looks anyway (DBQ_POLL_SECONDS, 1)."""
    return float(getattr(settings, "DBQ_POLL_SECONDS", 1))


def max_batch_size() -> int:
    """The most jobs a worker claims in one statement (DBQ_MAX_BATCH_SIZE, 100)."""
    return int(getattr(settings, "DBQ_MAX_BATCH_SIZE", 100))


def batch_seconds() -> float:
    """The time one batch of claimed jobs may take before the rest is given back (DBQ_BATCH_SECONDS, 0.5)."""
    return float(getattr(settings, "DBQ_BATCH_SECONDS", 0.5))


def shutdown_grace() -> float | None:
    """How long a stopping worker waits for its running task (DBQ_SHUTDOWN_GRACE, None: to its end)."""
    grace = getattr(settings, "DBQ_SHUTDOWN_GRACE", None)
    return None if grace is None else float(grace)
