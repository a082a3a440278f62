"""Queue statistics: counts per queue and state, waiting age, recent throughput."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.db import connections, router

from django_dbq import tasks
from django_dbq.sqlfiles import bind, load_queries

WINDOW_MINUTES = 5
# Pages of the projection read to count finished jobs (about 16 MB).
SAMPLE_PAGES = 2000


def queue_stats(using: str | None = None) -> dict[str, dict[str, Any]]:
    """Per queue: jobs per state, oldest waiting job's age (s), completed and failed per minute,
    the waiting jobs whose name these settings do not know (workers here leave them), and,
    for a paused queue (listed even with no jobs), its pause: reason, by, role, since.

    On the database Django's routers read jobs from (db_for_read), unless `using`."""
    from django_dbq.projections.models import Job

    using = using or router.db_for_read(Job)
    queries = load_queries("django_dbq.projections")
    stats: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            "states": {},
            # The states whose count is an estimate (finished jobs of a large projection).
            "estimated": [],
            "oldest_waiting_seconds": None,
            "completed_per_minute": 0.0,
            "failed_per_minute": 0.0,
            "unknown_names": {},
            "paused": None,
        }
    )
    with connections[using].cursor() as cursor:
        cursor.execute(queries["stats_live_by_queue_and_state"])
        for queue, state, count in cursor.fetchall():
            stats[queue]["states"][state] = count
        # Completed jobs are the bulk of history: counted exactly in a projection
        # of up to SAMPLE_PAGES pages, estimated from that many pages picked at
        # random in a larger one, so that the count costs the same whatever lies
        # behind it. Every queue's COMPLETE count is then an estimate (0 included:
        # a queue's few completed jobs may lie in no page read).
        cursor.execute(queries["stats_job_pages"])
        pages = cursor.fetchone()[0]
        percent = 100.0 if pages <= SAMPLE_PAGES else 100.0 * SAMPLE_PAGES / pages
        cursor.execute(*bind(queries["stats_completed_by_queue"], {"percent": percent}))
        for queue, count in cursor.fetchall():
            stats[queue]["states"]["COMPLETE"] = round(count * 100.0 / percent)
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
    if percent < 100.0:
        for row in stats.values():
            row["estimated"] = ["COMPLETE"]
    return dict(sorted(stats.items()))
