"""Retries: how long a failed job waits before its next attempt.

Per job in settings.JOBS:

    "retries": 3,                        # attempts after the first failure (default 0)
    "retry_backoff": "exponential",      # or "constant", or a dotted path to f(job, attempt) -> seconds
    "retry_delay": 5,                    # seconds: the constant delay, or the exponential base
    "retry_max_delay": 3600,             # the exponential delay's ceiling

Exponential backoff waits delay * 2 ** (attempt - 1) seconds, capped, times a random
factor between 0.5 and 1.5, so that jobs failing together do not retry together.

A job whose worker was lost while it ran it (the task crashed the process, was
killed for memory, called os._exit) counts an attempt too, with the same backoff:
it is retried while it has had fewer than max(retries, 1) failed attempts, and
fails with a WorkerLost error after that; so a job with no retries gets one more
run after a lost worker, and a task that always kills its worker stops being run.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

logger = logging.getLogger(__name__)

BACKOFFS = ("exponential", "constant")
DEFAULT_DELAY = 5.0
DEFAULT_MAX_DELAY = 3600.0


def retry_delay(config: dict[str, Any], attempt: int, job: Any) -> float:
    """Seconds to wait before retry number `attempt` (1 for the first retry)."""
    backoff = config.get("retry_backoff", "exponential")
    delay = float(config.get("retry_delay", DEFAULT_DELAY))
    if backoff == "constant":
        return delay
    if backoff == "exponential":
        ceiling = float(config.get("retry_max_delay", DEFAULT_MAX_DELAY))
        return min(delay * 2 ** (attempt - 1), ceiling) * random.uniform(0.5, 1.5)
    return float(import_string(backoff)(job, attempt))


_lost_rules: dict[str, dict[str, Any]] | None = None


def lost_worker_rules() -> dict[str, dict[str, Any]]:
    """Per job name of settings.JOBS: how often a lost worker's job is retried, and after what waits.

    {name: {"limit": max(retries, 1), "delays": [seconds before retry 1, 2, ...]}},
    read by the database when it expires the lease of a lost worker's job.
    """
    global _lost_rules
    if _lost_rules is None:
        rules = {}
        for name, config in getattr(settings, "JOBS", {}).items():
            config = config if isinstance(config, dict) else {}
            limit = max(int(config.get("retries") or 0), 1)
            rules[name] = {
                "limit": limit,
                "delays": [_lost_delay(name, config, n) for n in range(1, limit + 1)],
            }
        _lost_rules = rules
    return _lost_rules


def _lost_delay(name: str, config: dict[str, Any], attempt: int) -> float:
    try:
        # No job to hand a backoff function: the rules hold for every job of the name.
        return retry_delay(config, attempt, None)
    except Exception:
        logger.warning(
            "The retry backoff of job %r did not give a delay for a lost worker; "
            "exponential from %s s is used",
            name,
            DEFAULT_DELAY,
        )
        return min(DEFAULT_DELAY * 2 ** (attempt - 1), DEFAULT_MAX_DELAY)


@receiver(setting_changed)
def _forget_lost_rules(setting: str, **kwargs: Any) -> None:
    global _lost_rules
    if setting == "JOBS":
        _lost_rules = None
