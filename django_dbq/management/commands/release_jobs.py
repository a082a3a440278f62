from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_dbq.management.selection import add_selection_arguments, selected_jobs


class Command(BaseCommand):
    help = (
        "Return running jobs whose worker is known to be gone to their queue now, "
        "without waiting for their lease to run out (a lease_revoked event each)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_selection_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        from django_dbq.events.operations import release_jobs

        ids = selected_jobs(options).values_list("id", flat=True)
        released = release_jobs(ids, options["reason"])
        self.stdout.write(f"released {len(released)} running jobs")
