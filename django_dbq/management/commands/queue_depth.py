from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_dbq.models import Job


class Command(BaseCommand):
    help = "Print the number of NEW and READY jobs in the given queues."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("queue_name", nargs="*", default=["default"], type=str)
        parser.add_argument(
            "--exclude_future_jobs",
            action="store_true",
            help="Leave out jobs whose run_after is still in the future.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        depths = Job.get_queue_depths(exclude_future_jobs=options["exclude_future_jobs"])
        shown = " ".join(f"{name}={depths.get(name, 0)}" for name in options["queue_name"])
        self.stdout.write(f"event=queue_depths {shown}")
