from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from django_dbq.roles import grant_statements, revoke_statements


class Command(BaseCommand):
    help = (
        "Print (or run) the GRANTs for least-privilege worker, app and maintenance roles, "
        "after REVOKEs of any write right a role other than the owner holds on the tables."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--worker", help="Role the workers connect as.")
        parser.add_argument("--app", help="Role the web application connects as.")
        parser.add_argument("--maintenance", help="Role that runs delete_old_jobs.")
        parser.add_argument(
            "--execute", action="store_true", help="Run the GRANTs, not only print them."
        )
        parser.add_argument("--database", default="default", help="Database alias.")

    def handle(self, *args: Any, **options: Any) -> None:
        statements = grant_statements(options["worker"], options["app"], options["maintenance"])
        if not statements:
            raise CommandError("Name at least one role: --worker, --app or --maintenance.")
        connection = connections[options["database"]]
        with connection.cursor() as cursor:
            for statement in revoke_statements(cursor) + statements:
                text = statement.as_string(cursor.connection)
                self.stdout.write(f"{text};")
                if options["execute"]:
                    cursor.execute(text)
