from __future__ import annotations

import uuid
from typing import Any

import orjson
from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_dbq.history import format_table, job_timeline
from django_dbq.management.selection import parse_when
from django_dbq.projections.replay import projection_as_of


class Command(BaseCommand):
    help = "Print a job's timeline from the ledger: time, event, worker, task, duration, error."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_id", help="The job's id (a UUID).")
        parser.add_argument(
            "--as-of",
            help="Show the history up to this time (ISO 8601) and the job as it was then.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            job_id = uuid.UUID(options["job_id"])
        except ValueError:
            raise CommandError(
                f"{options['job_id']!r} is not a job id; pass the job's UUID."
            ) from None
        when = parse_when(options["as_of"]) if options["as_of"] else None
        rows = job_timeline(job_id, until=when)
        if not rows:
            raise CommandError(
                f"No events for job {job_id} (then): it did not exist or was deleted."
            )
        self.stdout.write(format_table(rows))
        if when is not None:
            (job,) = projection_as_of(when, [job_id])
            self.stdout.write(
                f"as of {when.isoformat()}: state={job.state} next_task={job.next_task or '-'} "
                f"queue={job.queue_name} priority={job.priority} attempts={job.attempts} "
                f"workspace={orjson.dumps(job.workspace).decode()}"
            )
