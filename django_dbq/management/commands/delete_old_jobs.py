from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_dbq.models import Job


class Command(BaseCommand):
    help = (
        "Delete COMPLETE, FAILED and CANCELLED jobs (and STOPPING ones no worker holds), with"
        " their whole history, created over N hours ago."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--hours",
            type=int,
            default=None,
            help="Delete jobs older than this many hours (default 24).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        deleted = Job.objects.delete_old(hours=options["hours"])
        # django-db-queue's line; how many went with --verbosity 2.
        if options["verbosity"] >= 2:
            self.stdout.write(f"Deleted old jobs ({deleted})")
        else:
            self.stdout.write("Deleted old jobs")
