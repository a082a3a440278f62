from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_dbq.exceptions import InvalidQueueError


class Command(BaseCommand):
    help = (
        "Pause a queue: workers claim none of its jobs until resume_queue; enqueueing goes on. "
        "Recorded in the queue ledger with who, when and why."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("queue_name", help="The queue to pause.")
        parser.add_argument("--reason", default="", help="Why; recorded with the pause.")
        parser.add_argument(
            "--by", default=None, help="Who pauses it (default: the OS user at this host)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from django_dbq.queues import default_by, pause_queue, paused_queues

        name = options["queue_name"]
        try:
            paused = pause_queue(name, options["reason"], options["by"] or default_by())
        except InvalidQueueError as exc:
            raise CommandError(str(exc)) from None
        if paused:
            self.stdout.write(
                f"paused queue {name!r}; workers claim none of its jobs until resumed"
            )
            return
        queue = paused_queues().get(name)  # None if resumed meanwhile
        since = (
            f" (since {queue.since.isoformat()}, by {queue.by} as {queue.role}: "
            f"{queue.reason or 'no reason given'})"
            if queue
            else ""
        )
        self.stdout.write(f"queue {name!r} was paused already{since}; nothing recorded")
