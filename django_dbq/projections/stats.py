"""Queue statistics: counts per queue and state, waiting age, recent throughput."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections

from django_dbq import tasks
from django_dbq.sqlfiles import bind, load_queries

WINDOW_MINUTES = 5


def queue_stats(using: str = DEFAULT_DB_ALIAS) -> dict[str, dict[str, Any]]:
    """Per queue: jobs per state, oldest waiting job's age (s), completed and failed per minute,
    the waiting jobs whose name these settings do not know (workers here leave them), and,
    for a paused queue (listed even with no jobs), its pause: reason, by, role, since."""
    queries = load_queries("django_dbq.projections")
    stats: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            "states": {},
            "oldest_waiting_seconds": None,
            "completed_per_minute": 0.0,
            "failed_per_minute": 0.0,
            "unknown_names": {},
            "paused": None,
        }
    )
    with connections[using].cursor() as cursor:
        cursor.execute(queries["stats_by_queue_and_state"])
        for queue, state, count in cursor.fetchall():
            stats[queue]["states"][state] = count
        cursor.execute(queries["stats_oldest_waiting"])
        for queue, age in cursor.fetchall():
            stats[queue]["oldest_waiting_seconds"] = round(age, 3)
        cursor.execute(*bind(queries["stats_recent_outcomes"], {"minutes": WINDOW_MINUTES}))
        for queue, kind, count in cursor.fetchall():
            stats[queue][f"{kind}_per_minute"] = round(count / WINDOW_MINUTES, 2)
        cursor.execute(*bind(queries["stats_unknown_names"], {"names": tasks.known_job_names()}))
        for queue, name, count in cursor.fetchall():
            stats[queue]["unknown_names"][name] = count
        cursor.execute(queries["stats_paused"])
        for queue, reason, by, role, since in cursor.fetchall():
            stats[queue]["paused"] = {
                "reason": reason,
                "by": by,
                "role": role,
                "since": since.isoformat(),
            }
    return dict(sorted(stats.items()))
