from __future__ import annotations

from collections import Counter
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_dbq.management.selection import add_selection_arguments, selected_jobs


class Command(BaseCommand):
    help = "Cancel jobs: waiting ones at once, running ones after their current task."

    def add_arguments(self, parser: CommandParser) -> None:
        add_selection_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        from django_dbq.events.operations import cancel_jobs

        done = Counter(
            cancel_jobs(
                selected_jobs(options).values_list("id", flat=True), options["reason"]
            ).values()
        )
        self.stdout.write(
            f"cancelled {done['cancelled']} waiting jobs; "
            f"asked {done['cancel_requested']} running jobs to stop after their task"
        )
