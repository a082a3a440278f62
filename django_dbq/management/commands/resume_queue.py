from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_dbq.exceptions import InvalidQueueError


class Command(BaseCommand):
    help = "Resume a paused queue: its workers are woken and run its jobs at once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("queue_name", help="The queue to resume.")
        parser.add_argument(
            "--by", default=None, help="Who resumes it (default: the OS user at this host)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from django_dbq.queues import default_by, resume_queue

        name = options["queue_name"]
        try:
            resumed = resume_queue(name, options["by"] or default_by())
        except InvalidQueueError as exc:
            raise CommandError(str(exc)) from None
        if resumed:
            self.stdout.write(f"resumed queue {name!r}")
        else:
            self.stdout.write(f"queue {name!r} was not paused; nothing recorded")
