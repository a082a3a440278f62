from __future__ import annotations

from typing import Any

import orjson
from django.core.management.base import BaseCommand, CommandParser

from django_dbq.models import Job
from django_dbq.projections import stats as job_stats
from django_dbq.projections.stats import WINDOW_MINUTES, queue_stats


class Command(BaseCommand):
    help = (
        "Print jobs per queue and state, the oldest waiting job's age, recent throughput, "
        "and the paused queues."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="One JSON document, for scripts.")

    def handle(self, *args: Any, **options: Any) -> None:
        stats = queue_stats()
        if options["json"]:
            self.stdout.write(
                orjson.dumps({"window_minutes": WINDOW_MINUTES, "queues": stats}).decode()
            )
            return
        states = list(Job.STATES.values)
        header = ["queue", *states, "oldest waiting", "done/min", "failed/min", "paused"]
        rows = [header]
        for queue, row in stats.items():
            age = row["oldest_waiting_seconds"]
            rows.append(
                [
                    queue,
                    *(
                        ("~" if state in row["estimated"] else "")
                        + str(row["states"].get(state, 0))
                        for state in states
                    ),
                    "-" if age is None else f"{age:.1f}s",
                    f"{row['completed_per_minute']:g}",
                    f"{row['failed_per_minute']:g}",
                    "yes" if row["paused"] else "-",
                ]
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for r in rows:
            self.stdout.write(
                "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            )
        self.stdout.write(
            f"(done/min and failed/min: last {WINDOW_MINUTES} minutes, from the ledger)"
        )
        if any(row["estimated"] for row in stats.values()):
            self.stdout.write(
                f"(~: COMPLETE estimated from {job_stats.SAMPLE_PAGES:,} pages of the jobs picked "
                "at random; the other states are counted exactly)"
            )
        for queue, row in stats.items():
            if pause := row["paused"]:
                self.stdout.write(
                    f"paused: {queue} since {pause['since']} by {pause['by'] or '-'} "
                    f"(role {pause['role']}): {pause['reason'] or 'no reason given'}"
                )
        for queue, row in stats.items():
            if row["unknown_names"]:
                names = ", ".join(f"{n} ({c})" for n, c in sorted(row["unknown_names"].items()))
                self.stdout.write(
                    f"waiting in {queue} with a name settings.JOBS does not know here "
                    f"(a worker that knows it runs them): {names}"
                )
