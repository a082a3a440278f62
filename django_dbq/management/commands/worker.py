from __future__ import annotations

import math
import sys
from time import sleep
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connection

from django_dbq.worker import Worker, run_processes

# As in django-db-queue 3.3: Worker.process_job sleeps through this module's
# `sleep`, which tests patch ("django_dbq.management.commands.worker.sleep").
__all__ = ["DEFAULT_QUEUE_NAME", "Command", "Worker", "sleep"]

DEFAULT_QUEUE_NAME = "default"


class Command(BaseCommand):
    help = "Run a queue worker process"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("queue_name", nargs="?", default=DEFAULT_QUEUE_NAME, type=str)
        parser.add_argument(
            "--rate_limit",
            type=float,
            default=0,
            help="The least number of seconds between two jobs (default 0: no limit).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            dest="dry_run",
            help="Don't actually start the worker. Used for testing.",
        )
        parser.add_argument(
            "--burst", action="store_true", help="Exit 0 once no job is ready to run."
        )
        parser.add_argument(
            "--max-jobs", type=int, default=None, help="Exit after running this many jobs."
        )
        parser.add_argument(
            "--no-schedules",
            action="store_false",
            dest="schedules",
            help="Do not enqueue the ticks of the periodic jobs of settings.JOBS.",
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=1,
            help="Run this many worker processes (each runs one job at a time).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        queue_name, rate_limit = options["queue_name"], options["rate_limit"]
        if options["concurrency"] < 1 or (
            options["max_jobs"] is not None and options["max_jobs"] < 1
        ):
            raise CommandError("--concurrency and --max-jobs take a whole number of at least 1.")
        if not (math.isfinite(rate_limit) and rate_limit >= 0):
            raise CommandError(
                f"--rate_limit takes a number of seconds of at least 0, not {rate_limit}."
            )
        self.stdout.write(
            f'Starting job worker for queue "{queue_name}" with rate limit of one job per '
            f"{_seconds(rate_limit)} second(s)"
        )
        self._say_if_paused(queue_name)
        if options["dry_run"]:
            return

        def work() -> None:
            Worker(
                queue_name,
                rate_limit,
                burst=options["burst"],
                max_jobs=options["max_jobs"],
                schedules=options["schedules"],
            ).run()

        if options["concurrency"] == 1:
            work()
            return
        status = run_processes(options["concurrency"], work)
        if status:
            sys.exit(status)

    def _say_if_paused(self, queue_name: str) -> None:
        """A worker of a paused queue runs nothing until it is resumed: say so at the start.

        Only a note: without the database now, the worker starts anyway and its
        loop reconnects, as it would without this look.
        """
        from django_dbq.queues import paused_queues

        try:
            queue = paused_queues().get(queue_name)
        except DatabaseError:
            connection.close()
            return
        if queue is not None:
            self.stdout.write(
                f'Queue "{queue_name}" is paused (since {queue.since.isoformat()}, by {queue.by} '
                f"as {queue.role}: {queue.reason or 'no reason given'}); this worker claims "
                "nothing from it until resume_queue"
            )


def _seconds(value: float) -> str:
    """Seconds as django-db-queue 3.3 printed its whole number (1, 3600), else as given (0.5)."""
    return str(int(value)) if float(value).is_integer() else str(value)
