from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from django_dbq.events.models import Seal
from django_dbq.seals import seal_ledger


class Command(BaseCommand):
    help = (
        "Append a seal, signed with settings.DBQ_LEDGER_KEY, over every event committed since "
        "the last one; or --list the seals."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--list", action="store_true", help="List the seals, newest last.")
        parser.add_argument("--database", default="default", help="Database alias.")

    def handle(self, *args: Any, **options: Any) -> None:
        using = options["database"]
        if options["list"]:
            for seal in Seal.objects.using(using).order_by("id"):
                self.stdout.write(
                    f"seal {seal.id} {seal.sealed_at.isoformat()} events {seal.events} "
                    f"total {seal.total_events} last_event_id {seal.last_event_id} "
                    f"digest {bytes(seal.digest).hex()}"
                )
            return
        try:
            sealed = seal_ledger(using=using)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        except DatabaseError as exc:
            if not str(exc).startswith("django_dbq:"):
                raise
            hint = getattr(getattr(exc.__cause__, "diag", None), "message_hint", None)
            raise CommandError(f"{str(exc).splitlines()[0]}\n{hint or ''}".strip()) from None
        if sealed is None:
            self.stdout.write("nothing to seal: no event has been committed since the last seal")
            return
        self.stdout.write(
            f"sealed {sealed.id}: {sealed.events} events, {sealed.total_events} in all, "
            f"up to event id {sealed.last_event_id}; digest {sealed.digest.hex()}"
        )
