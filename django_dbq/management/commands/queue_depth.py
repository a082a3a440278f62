from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_dbq.models import Job


def _yes(value: str) -> bool:
    """The flag's value: false for false, no, off, 0 and nothing, true otherwise."""
    return value.strip().lower() not in ("false", "no", "off", "0", "")


class Command(BaseCommand):
    help = "Print the number of NEW and READY jobs in the given queues."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("queue_name", nargs="*", default=["default"], type=str)
        parser.add_argument(
            "--exclude_future_jobs",
            nargs="?",
            const=True,
            default=False,
            type=_yes,
            help="Leave out jobs whose run_after is still in the future. django-db-queue "
            "took a value (--exclude_future_jobs True); it still may.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        depths = Job.get_queue_depths(exclude_future_jobs=options["exclude_future_jobs"])
        shown = " ".join(f"{name}={depths.get(name, 0)}" for name in options["queue_name"])
        self.stdout.write(f"event=queue_depths {shown}")
