"""The job selection shared by commands that act on many jobs (cancel_jobs, requeue_jobs)."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db.models import QuerySet

from django_dbq.models import Job


def add_selection_arguments(parser: CommandParser) -> None:
    parser.add_argument("job_ids", nargs="*", help="Ids of the jobs to act on.")
    parser.add_argument("--queue", action="append", default=[], help="Jobs of this queue.")
    parser.add_argument("--name", action="append", default=[], help="Jobs of this name.")
    parser.add_argument("--state", action="append", default=[], help="Jobs in this state.")
    parser.add_argument("--all", action="store_true", help="Every job the command applies to.")
    parser.add_argument("--reason", default="", help="Recorded in the events.")


def selected_jobs(options: dict[str, Any]) -> QuerySet[Job]:
    """The jobs the options name; refuses to act on everything unless --all says so."""
    jobs = Job.objects.all()
    if not (options["job_ids"] or options["queue"] or options["name"] or options["state"]):
        if not options["all"]:
            raise CommandError(
                "Name jobs by id, or filter with --queue, --name or --state (or --all)."
            )
        return jobs
    if options["job_ids"]:
        try:
            jobs = jobs.filter(id__in=[uuid.UUID(value) for value in options["job_ids"]])
        except ValueError as exc:
            raise CommandError(f"Not a job id: {exc}") from None
    unknown = set(options["state"]) - set(Job.STATES.values)
    if unknown:
        raise CommandError(
            f"Unknown state {', '.join(sorted(unknown))}; use {', '.join(Job.STATES.values)}."
        )
    for field, values in (
        ("queue_name", options["queue"]),
        ("name", options["name"]),
        ("state", options["state"]),
    ):
        if values:
            jobs = jobs.filter(**{f"{field}__in": values})
    return jobs


def parse_when(text: str) -> Any:
    """An ISO 8601 time from the command line (naive ones are in the current time zone)."""
    from django.utils import timezone
    from django.utils.dateparse import parse_datetime

    when = parse_datetime(text)
    if when is None:
        raise CommandError(f"{text!r} is not a time; write it as 2026-11-28T10:00:00+00:00.")
    return timezone.make_aware(when) if timezone.is_naive(when) else when
