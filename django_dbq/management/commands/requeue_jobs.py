from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_dbq.management.selection import add_selection_arguments, selected_jobs


class Command(BaseCommand):
    help = "Put FAILED and CANCELLED jobs back in their queue, resuming at their next task."

    def add_arguments(self, parser: CommandParser) -> None:
        add_selection_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        from django_dbq.events.operations import requeue_jobs

        done = requeue_jobs(selected_jobs(options).values_list("id", flat=True), options["reason"])
        self.stdout.write(f"requeued {len(done)} jobs")
