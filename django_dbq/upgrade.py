"""Upgrading in place: what django_dbq_job shows of django-db-queue's migrations.

django-db-queue's six migrations (shipped in django_dbq/migrations under their
names) each leave a mark on the table but 0002 and 0006, which change model
options and choices only: 0001 creates it, 0003 adds ``priority``, 0004 turns
``workspace`` from text into jsonb, 0005 adds ``run_after``. So the columns tell
which of them ran, and when django_migrations says otherwise, the guards and the
system check below say which rows to record before ``migrate`` can go on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django_dbq.exceptions import MigrationHistoryError

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

APP = "django_dbq"
ORIGINALS = (
    "0001_initial",
    "0002_auto_20151016_1027",
    "0003_auto_20180713_1000",
    "0004_auto_20210818_0247",
    "0005_job_run_after",
    "0006_alter_job_state",
)
SQUASH = "0001_squashed_0006_alter_job_state"
FAKE_SQUASH = f"manage.py migrate {APP} {SQUASH} --fake"

JOB_COLUMNS = """
SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = pg_catalog.to_regclass('django_dbq_job') AND a.attnum > 0 AND NOT a.attisdropped
"""
HAS_LEDGER = "SELECT pg_catalog.to_regclass('django_dbq_jobevent') IS NOT NULL"
RECORDED = "SELECT name FROM django_migrations WHERE app = %s"
LEDGER_LOST = (
    "The ledger (django_dbq_jobevent) exists: the records of django-dbq's own migrations "
    "were lost too. Restore django_dbq's rows of django_migrations from a backup, or record "
    "without running them the migrations whose changes the tables have: manage.py migrate "
    "django_dbq <the last of them> --fake (all of them if the tables are this release's)."
)
# What 0001_initial creates.
FIRST_COLUMNS = {
    "id",
    "created",
    "modified",
    "name",
    "state",
    "next_task",
    "workspace",
    "queue_name",
}


def read_job_table(cursor: Any) -> tuple[dict[str, str], bool]:
    """The job table's columns and their types ({} when it is absent), and whether the ledger exists."""
    cursor.execute(JOB_COLUMNS)
    columns = dict(cursor.fetchall())
    cursor.execute(HAS_LEDGER)
    return columns, cursor.fetchone()[0]


def migrations_shown(columns: dict[str, str], ledger: bool) -> tuple[str, ...] | None:
    """The original migrations the table's columns show ran, or None if no release left it so."""
    if not columns:
        return None if ledger else ()
    if not FIRST_COLUMNS <= columns.keys():
        return None
    marks = ("priority" in columns, columns["workspace"] == "jsonb", "run_after" in columns)
    # 0002 and 0006 leave no mark: a table that shows 0001 (or 0005) may record them too.
    shown = {
        (False, False, False): ORIGINALS[:2],
        (True, False, False): ORIGINALS[:3],
        (True, True, False): ORIGINALS[:4],
        (True, True, True): ORIGINALS,
    }.get(marks)
    if ledger and shown != ORIGINALS:
        return None
    return shown


def record_statements(recorded: set[str], shown: tuple[str, ...]) -> list[str]:
    """The SQL that makes django_migrations record exactly the originals in `shown`."""
    missing = [name for name in shown if name not in recorded]
    extra = [name for name in ORIGINALS if name in recorded and name not in shown]
    # Text for a person to run: the names are the constants above, not input.
    statements = []
    if missing:
        rows = ", ".join(f"('{APP}', '{name}', now())" for name in missing)
        statements.append(f"INSERT INTO django_migrations (app, name, applied) VALUES {rows};")
    if extra:
        names = ", ".join(f"'{name}'" for name in extra)
        statements.append(
            f"DELETE FROM django_migrations WHERE app = '{APP}' AND name IN ({names});"
        )
    return statements


def describe(shown: tuple[str, ...] | None, columns: dict[str, str]) -> str:
    """What the job table's columns show, as a clause: "django_dbq_job has ..."."""
    if shown is None:
        found = ", ".join(f"{name} {kind}" for name, kind in sorted(columns.items()))
        return f"django_dbq_job has columns ({found}) that no django-db-queue release leaves"
    if not shown:
        return "there is no django_dbq_job table"
    return (
        f"django_dbq_job has the columns that django-db-queue's migrations {ORIGINALS[0]} "
        f"to {shown[-1]} leave"
    )


def record_hint(recorded: set[str], shown: tuple[str, ...] | None) -> str:
    """How to make django_migrations say what the table holds."""
    statements = [] if shown is None else record_statements(recorded, shown)
    if not statements:
        return (
            "Restore django_dbq's rows of django_migrations from a backup, or record there "
            "the migrations (of django_dbq/migrations) whose changes the tables have."
        )
    return (
        "Make the records say what the table holds, in manage.py dbshell: "
        f"{' '.join(statements)} Then run manage.py migrate, which runs the others."
    )


def recorded_migrations(cursor: Any) -> set[str]:
    """The names of django_dbq's migrations that django_migrations records."""
    cursor.execute(RECORDED, [APP])
    return {name for (name,) in cursor.fetchall()}


def refuse_unrecorded_job_table(apps: Any, schema_editor: Any) -> None:
    """Stop the first migration from creating django_dbq_job when the table is there already."""
    with schema_editor.connection.cursor() as cursor:
        columns, ledger = read_job_table(cursor)
        if not columns:
            return
        recorded = recorded_migrations(cursor)
    shown = migrations_shown(columns, ledger)
    problem = (
        "django_dbq_job exists, but django_migrations records none of the migrations that "
        f"create it ({ORIGINALS[0]} to {ORIGINALS[-1]}, or {SQUASH}), so migrate would "
        f"create it again: {describe(shown, columns)}."
    )
    if shown == ORIGINALS:
        fix = (
            LEDGER_LOST
            if ledger
            else f"Record them without running them: {FAKE_SQUASH}; then run manage.py migrate."
        )
    else:
        fix = record_hint(recorded, shown)
        if shown:
            fix += f" (Do not fake {SQUASH}: it records all six.)"
    raise MigrationHistoryError(f"{problem} {fix}")


def refuse_unexpected_ledger_start(apps: Any, schema_editor: Any) -> None:
    """Stop 0002_ledger unless the job table is 3.x's and the ledger is not there yet."""
    with schema_editor.connection.cursor() as cursor:
        columns, ledger = read_job_table(cursor)
        recorded = recorded_migrations(cursor)
    if ledger:
        raise MigrationHistoryError(
            "django_dbq_jobevent exists, but django_migrations does not record 0002_ledger, "
            f"which creates it. {LEDGER_LOST}"
        )
    shown = migrations_shown(columns, ledger)
    if shown == ORIGINALS:
        return
    raise MigrationHistoryError(
        f"django_migrations records django-db-queue's migrations to {ORIGINALS[-1]}, but "
        f"{describe(shown, columns)}, so 0002_ledger cannot convert it. "
        f"{record_hint(recorded, shown)}"
    )


def inconsistent_history(connection: BaseDatabaseWrapper) -> tuple[str, str] | None:
    """The first django_dbq migration recorded before a dependency, and what it lacks.

    Applied as Django's migration loader counts it: a squashed migration only when
    all the migrations it replaces are recorded (a recorded squash alone is run
    again). MigrationLoader.check_consistent_history counts the recorded squash and
    lets such a history through, to fail in building the state; this catches both.
    """
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(connection)
    applied = loader.applied_migrations
    for key in sorted(applied):
        if key[0] != APP or key not in loader.graph.nodes:
            continue
        for parent in sorted(p.key for p in loader.graph.node_map[key].parents):
            if parent in applied:
                continue
            squash = loader.replacements.get(parent)
            if squash is None:
                return key[1], parent[1]
            missing = [name for app, name in squash.replaces if (app, name) not in applied]
            return key[1], (
                f"{', '.join(missing)} (Django counts {parent[1]} as applied only when all the "
                "migrations it replaces are)"
            )
    return None


def history_problem(connection: BaseDatabaseWrapper) -> tuple[str, str] | None:
    """A message and a hint when Django would refuse django_dbq's recorded history."""
    found = inconsistent_history(connection)
    if found is None:
        return None
    migration, dependency = found
    with connection.cursor() as cursor:
        columns, ledger = read_job_table(cursor)
        recorded = recorded_migrations(cursor)
    shown = migrations_shown(columns, ledger)
    message = (
        f"django_migrations records {APP}.{migration} but not {dependency}, which it depends "
        f"on, so migrate cannot go on (even with --fake); {describe(shown, columns)}."
    )
    return message, record_hint(recorded, shown)
