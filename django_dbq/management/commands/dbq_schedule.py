from __future__ import annotations

import datetime
from typing import Any

import orjson
from django.core.management.base import BaseCommand, CommandParser

from django_dbq.schedules import schedule_overview, time_zone


class Command(BaseCommand):
    help = (
        "List the periodic jobs of settings.JOBS: schedule, queue, the last tick enqueued "
        "and the next one (times in TIME_ZONE)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="One JSON document, for scripts.")

    def handle(self, *args: Any, **options: Any) -> None:
        overview = schedule_overview()
        if options["json"]:
            self.stdout.write(orjson.dumps(overview).decode())
            return
        if not overview:
            self.stdout.write('No periodic jobs: give a job of settings.JOBS a "schedule".')
            return
        rows = [["schedule", "every", "queue", "catch_up", "last tick", "next tick"]]
        for row in overview:
            rows.append(
                [
                    row["name"],
                    row["schedule"] or "(not in settings.JOBS)",
                    row["queue_name"] or "-",
                    "-" if row["catch_up"] is None else ("yes" if row["catch_up"] else "no"),
                    _shown(row["last_tick"]),
                    _shown(row["next_tick"]) + (" (due)" if row["due"] else ""),
                ]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write(
                "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            )


def _shown(moment: datetime.datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(time_zone()).isoformat()
