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
import math
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
    if backoff == "constant":
        return float(config.get("retry_delay", DEFAULT_DELAY))
    if backoff == "exponential":
        return _exponential(config, attempt) * random.uniform(0.5, 1.5)
    return float(import_string(backoff)(job, attempt))


def _exponential(config: dict[str, Any], attempt: int) -> float:
    """The exponential wait before retry `attempt`, capped, before its jitter."""
    delay = float(config.get("retry_delay", DEFAULT_DELAY))
    ceiling = float(config.get("retry_max_delay", DEFAULT_MAX_DELAY))
    return min(delay * 2 ** min(attempt - 1, 64), ceiling)


_lost_rules: dict[str, dict[str, Any]] | None = None
# Waits listed per job name; the database carries on past the list (5 * 2^n s).
LISTED_DELAYS = 50


def lost_worker_rules() -> dict[str, dict[str, Any]]:
    """Per job name of settings.JOBS: how often a lost worker's job is retried, and after what waits.

    {name: {"limit": max(retries, 1), "delays": [seconds before retry 1, 2, ...],
    "jitter": whether the database randomises them (exponential backoff)}}, read
    by the database when it expires the lease of a lost worker's job. Never
    raises: a backoff that cannot give a wait leaves it to the database's default.
    """
    global _lost_rules
    if _lost_rules is None:
        rules = {}
        jobs = getattr(settings, "JOBS", {}) or {}
        for name, config in jobs.items() if isinstance(jobs, dict) else []:
            config = config if isinstance(config, dict) else {}
            try:
                limit = max(int(config.get("retries") or 0), 1)
            except (TypeError, ValueError, OverflowError):
                limit = 1
            rules[name] = _lost_rule(name, config, limit)
        _lost_rules = rules
    return _lost_rules


def _lost_rule(name: str, config: dict[str, Any], limit: int) -> dict[str, Any]:
    backoff = config.get("retry_backoff", "exponential")
    delays: list[float] = []
    try:
        for attempt in range(1, min(limit, LISTED_DELAYS) + 1):
            if backoff == "exponential":
                delay = _exponential(config, attempt)  # the database jitters each wait
            else:
                # No job to hand a backoff function: the rule holds for every job of the name.
                delay = retry_delay(config, attempt, None)
            delay = float(delay)
            if not math.isfinite(delay):
                raise ValueError(f"not a finite number of seconds: {delay!r}")
            delays.append(min(max(delay, 0.0), 86400.0))
    except Exception:
        logger.warning(
            "The retry backoff of job %r did not give a wait for a lost worker's job; "
            "the database's default (5 * 2^n s) is used",
            name,
            exc_info=True,
        )
    return {"limit": limit, "delays": delays, "jitter": backoff == "exponential"}


@receiver(setting_changed)
def _forget_lost_rules(setting: str, **kwargs: Any) -> None:
    global _lost_rules
    if setting == "JOBS":
        _lost_rules = None
