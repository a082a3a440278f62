from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_dbq.models import Job

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class Command(BaseCommand):
    help = "Print the number of NEW and READY jobs in the given queues."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("queue_name", nargs="*", default=[], type=str)
        parser.add_argument(
            "--exclude_future_jobs",
            nargs="?",
            const=True,
            default=False,
            help="Leave out jobs whose run_after is still in the future. django-db-queue "
            "took a value (--exclude_future_jobs True); it still may: true, yes, on, 1 or "
            "false, no, off, 0.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        names = list(options["queue_name"])
        exclude = options["exclude_future_jobs"]
        if isinstance(exclude, str):
            word = exclude.strip().lower()
            if word not in _TRUE + _FALSE:
                # Not a value: the first queue name, which the flag took for one.
                names.insert(0, exclude)
            exclude = word not in _FALSE
        depths = Job.get_queue_depths(exclude_future_jobs=bool(exclude))
        shown = " ".join(f"{name}={depths.get(name, 0)}" for name in names or ["default"])
        self.stdout.write(f"event=queue_depths {shown}")
