"""Retries: how long a failed job waits before its next attempt.

Per job in settings.JOBS:

    "retries": 3,                        # attempts after the first failure (default 0)
    "retry_backoff": "exponential",      # or "constant", or a dotted path to f(job, attempt) -> seconds
    "retry_delay": 5,                    # seconds: the constant delay, or the exponential base
    "retry_max_delay": 3600,             # the exponential delay's ceiling

Exponential backoff waits delay * 2 ** (attempt - 1) seconds, capped, times a random
factor between 0.5 and 1.5, so that jobs failing together do not retry together.
"""

from __future__ import annotations

import random
from typing import Any

from django.utils.module_loading import import_string

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
