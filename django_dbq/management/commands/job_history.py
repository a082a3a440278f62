from __future__ import annotations

import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_dbq.history import format_table, job_timeline


class Command(BaseCommand):
    help = "Print a job's timeline from the ledger: time, event, worker, task, duration, error."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_id", help="The job's id (a UUID).")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            job_id = uuid.UUID(options["job_id"])
        except ValueError:
            raise CommandError(
                f"{options['job_id']!r} is not a job id; pass the job's UUID."
            ) from None
        rows = job_timeline(job_id)
        if not rows:
            raise CommandError(f"No events for job {job_id}: it never existed or was deleted.")
        self.stdout.write(format_table(rows))
