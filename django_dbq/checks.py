"""System checks: settings.JOBS and INSTALLED_APPS are validated by ``manage.py check``."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.utils.module_loading import import_string

from django_dbq import tasks


@register()
def check_installed_apps(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """django-pgtrigger must be installed beside django_dbq."""
    if apps.is_installed("pgtrigger"):
        return []
    return [
        Error(
            "django_dbq needs django-pgtrigger to install its ledger triggers.",
            hint='Add "pgtrigger" to INSTALLED_APPS, beside "django_dbq".',
            id="django_dbq.E001",
        )
    ]


_SCHEMA_CREATORS = """
WITH tables AS (
    SELECT c.relnamespace AS nsp, c.relowner AS owner
    FROM pg_catalog.pg_class c WHERE c.oid = 'django_dbq_job'::regclass
), creators AS (
    -- Whoever holds CREATE on the schema, and its owner, who always may.
    SELECT n.nspname, a.grantee
    FROM tables t JOIN pg_catalog.pg_namespace n ON n.oid = t.nsp,
         LATERAL aclexplode(COALESCE(n.nspacl, acldefault('n', n.nspowner))) a
    WHERE a.privilege_type = 'CREATE'
    UNION
    SELECT n.nspname, n.nspowner FROM tables t JOIN pg_catalog.pg_namespace n ON n.oid = t.nsp
)
SELECT DISTINCT CASE WHEN c.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END,
       quote_ident(c.nspname)
FROM creators c CROSS JOIN tables t
LEFT JOIN pg_catalog.pg_roles r ON r.oid = c.grantee
-- Not the tables' owner, nor a role whose rights it has, nor a superuser.
WHERE c.grantee <> t.owner
  AND (c.grantee = 0 OR NOT (r.rolsuper OR pg_has_role(t.owner, c.grantee, 'MEMBER')))
ORDER BY 1
"""


@register(Tags.database)
def check_schema_creators(databases: Any = None, **kwargs: Any) -> list[Warning]:
    """No role but the owner may CREATE in the schema of the job tables (runs with --database)."""
    from django.db import DatabaseError, connections, transaction

    warnings: list[Warning] = []
    for alias in databases or []:
        try:
            with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
                cursor.execute(_SCHEMA_CREATORS)
                rows = cursor.fetchall()
        except DatabaseError:
            continue  # not migrated yet, or not this app's database
        if rows:
            roles, schema = ", ".join(row[0] for row in rows), rows[0][1]
            warnings.append(
                Warning(
                    f"Roles other than the owner may CREATE in schema {schema} of the job "
                    f"tables: {roles}. Such a role can plant operators and functions there that "
                    "run with the rights of every role whose search_path holds the schema "
                    "(the ORM's queries included; django-dbq's own functions are pinned).",
                    hint=f"REVOKE CREATE ON SCHEMA {schema} FROM {roles}; (as the schema's owner).",
                    id="django_dbq.W001",
                )
            )
    return warnings


@register(Tags.database)
def check_migration_history(databases: Any = None, **kwargs: Any) -> list[Error]:
    """django_dbq's recorded migrations are ones Django can go on from (runs in migrate).

    Django refuses such a history with InconsistentMigrationHistory, before any
    migration runs and also with --fake; this says which records to fix, from what
    the job table holds.
    """
    from django.db import DatabaseError, connections, transaction
    from django.db.migrations.exceptions import NodeNotFoundError

    from django_dbq.upgrade import history_problem

    errors: list[Error] = []
    for alias in databases or []:
        try:
            with transaction.atomic(using=alias):
                problem = history_problem(connections[alias])
        except (DatabaseError, NodeNotFoundError):
            continue  # not this app's database, or a graph migrate reports itself
        if problem:
            message, hint = problem
            errors.append(Error(message, hint=hint, id="django_dbq.E013"))
    return errors


# The database caps every lease at this many seconds (events/sql/worker.sql).
MAX_LEASE_SECONDS = 3600


@register()
def check_lease_seconds(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """DBQ_LEASE_SECONDS is a number of seconds from 1 to the database's cap."""
    from django_dbq import conf

    try:
        seconds = conf.lease_seconds()
    except (TypeError, ValueError):
        seconds = float("nan")
    if 1 <= seconds <= MAX_LEASE_SECONDS:
        return []
    return [
        Error(
            f"DBQ_LEASE_SECONDS is {seconds!r}; the database takes leases of 1 to "
            f"{MAX_LEASE_SECONDS} seconds (a heartbeat renews them every third).",
            hint=f"Set DBQ_LEASE_SECONDS to a number from 1 to {MAX_LEASE_SECONDS}, e.g. 30.",
            id="django_dbq.E011",
        )
    ]


@register()
def check_shutdown_grace(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """DBQ_SHUTDOWN_GRACE is None or a number of seconds, not negative."""
    from django_dbq import conf

    try:
        grace = conf.shutdown_grace()
    except (TypeError, ValueError):
        grace = float("nan")
    if grace is None or grace >= 0:
        return []
    return [
        Error(
            f"DBQ_SHUTDOWN_GRACE is {getattr(settings, 'DBQ_SHUTDOWN_GRACE', None)!r}; it is how "
            "many seconds a stopping worker waits for its running task.",
            hint="Set DBQ_SHUTDOWN_GRACE to a number of seconds (0 or more), or None to wait "
            "for the task to end.",
            id="django_dbq.E012",
        )
    ]


@register()
def check_ledger_key(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """DBQ_LEDGER_KEY, when set, is long enough (E017); DBQ_SEAL_SECONDS is a number (E018)."""
    from django.core.exceptions import ImproperlyConfigured

    from django_dbq.seals import ledger_key, seal_seconds

    errors = []
    try:
        ledger_key()
    except ImproperlyConfigured as exc:
        errors.append(Error(str(exc), id="django_dbq.E017"))
    try:
        seconds = seal_seconds()
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds >= 0:
        errors.append(
            Error(
                f"DBQ_SEAL_SECONDS is {getattr(settings, 'DBQ_SEAL_SECONDS', None)!r}; it is how "
                "often, in seconds, a worker seals the ledger.",
                hint="Set DBQ_SEAL_SECONDS to a number of seconds, e.g. 60, or 0 for workers "
                "that never seal.",
                id="django_dbq.E018",
            )
        )
    return errors


@register()
def check_retention_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """DBQ_RETENTION_HOURS is unset or a number (E019); DBQ_RETENTION_SECONDS and
    DBQ_RETENTION_BATCH are positive numbers (E020, E021)."""
    from django_dbq.events.append import retention_batch
    from django_dbq.worker.retention import retention_hours, retention_seconds

    errors = []
    try:
        hours = retention_hours()
    except (TypeError, ValueError):
        hours = float("nan")
    # Not NaN, not infinite (no age), above 0 (0 or less: every finished job, however new).
    if hours is not None and not 0 < hours < float("inf"):
        errors.append(
            Error(
                f"DBQ_RETENTION_HOURS is {getattr(settings, 'DBQ_RETENTION_HOURS', None)!r}; "
                "it is the age in hours past which workers delete finished jobs, a number above "
                "0 (with 0 or less every worker would delete every finished job, however new).",
                hint="Set DBQ_RETENTION_HOURS to a number of hours, e.g. 168, or leave it unset "
                "for workers that delete nothing (manage.py delete_old_jobs --hours N still does, "
                "0 included).",
                id="django_dbq.E019",
            )
        )
    for name, read, code, example in (
        ("DBQ_RETENTION_SECONDS", retention_seconds, "E020", "3600"),
        ("DBQ_RETENTION_BATCH", retention_batch, "E021", "5000"),
    ):
        try:
            ok = read() > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            errors.append(
                Error(
                    f"{name} is {getattr(settings, name, None)!r}; it must be a positive number.",
                    hint=f"Set {name} to a positive number, e.g. {example}, or leave it unset.",
                    id=f"django_dbq.{code}",
                )
            )
    return errors


@register()
def check_jobs_setting(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Every job in settings.JOBS has tasks, and every task and hook path imports."""
    jobs = tasks.get_jobs_setting()
    if not isinstance(jobs, dict):
        return [Error("settings.JOBS must be a dict of job names.", id="django_dbq.E002")]
    errors: list[Error] = []
    for name, config in jobs.items():
        errors.extend(_check_job(name, config))
    return errors


def _check_job(name: str, config: Any) -> list[Error]:
    if not isinstance(config, (dict, list, tuple)):
        return [
            Error(
                f"settings.JOBS[{name!r}] must be a dict with a 'tasks' list, or a list of tasks.",
                id="django_dbq.E002",
            )
        ]
    errors = []
    if len(str(name)) > 100:
        errors.append(Error(f"Job name {name!r} is over 100 characters.", id="django_dbq.E003"))
    task_paths = tasks.get_task_names(name)
    if not task_paths:
        errors.append(
            Error(
                f"settings.JOBS[{name!r}] lists no tasks.",
                hint="Give it a 'tasks' list with at least one dotted path to a function.",
                id="django_dbq.E004",
            )
        )
    for path in task_paths:
        errors.extend(_check_path(name, "task", path, max_length=100))
    repeated = sorted({p for p in task_paths if task_paths.count(p) > 1})
    if repeated:
        errors.append(
            Error(
                f"settings.JOBS[{name!r}] lists {', '.join(repeated)} more than once.",
                hint="A job moves from task to task by path, so each path may appear once; "
                "to run a function twice, give it a second name in its module.",
                id="django_dbq.E008",
            )
        )
    config = tasks.get_job_config(name)
    for key in tasks.HOOK_KEYS:
        if config.get(key):
            errors.extend(_check_path(name, key, config[key]))
    return errors + _check_retries(name, config) + _check_schedule(name, config)


def _check_retries(job: str, config: dict[str, Any]) -> list[Error]:
    from django_dbq.retries import BACKOFFS

    errors = []
    retries = config.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        errors.append(
            Error(
                f"settings.JOBS[{job!r}] retries must be a whole number of at least 0, "
                f"not {retries!r}.",
                id="django_dbq.E009",
            )
        )
    for key in ("retry_delay", "retry_max_delay"):
        value = config.get(key, 1)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            errors.append(
                Error(
                    f"settings.JOBS[{job!r}] {key} must be a number of seconds, not {value!r}.",
                    id="django_dbq.E010",
                )
            )
    backoff = config.get("retry_backoff", "exponential")
    if backoff not in BACKOFFS:
        errors.extend(_check_path(job, "retry_backoff", backoff))
    return errors


def _check_schedule(job: str, config: dict[str, Any]) -> list[Error]:
    """A periodic job's schedule (E014), catch_up (E015) and the fields of its jobs (E016)."""
    from django_dbq.schedules import SCHEDULE_KEY, ScheduleError, option_problems, parse_schedule

    if SCHEDULE_KEY not in config:
        return []
    errors = []
    try:
        parse_schedule(job, config[SCHEDULE_KEY])
    except ScheduleError as exc:
        errors.append(
            Error(
                str(exc),
                hint='Use a cron expression such as "*/5 * * * *" (6 fields: seconds first, '
                '"*/10 * * * * *") or a positive number of seconds such as 30.',
                id="django_dbq.E014",
            )
        )
    for key, message in option_problems(job, config):
        errors.append(
            Error(message, id="django_dbq.E015" if key == "catch_up" else "django_dbq.E016")
        )
    return errors


def _check_path(job: str, what: str, path: Any, max_length: int | None = None) -> list[Error]:
    if not isinstance(path, str):
        return [
            Error(
                f"settings.JOBS[{job!r}] {what} {path!r} is not a dotted path string.",
                id="django_dbq.E005",
            )
        ]
    if max_length and len(path) > max_length:
        return [
            Error(
                f"settings.JOBS[{job!r}] {what} {path!r} is over {max_length} characters "
                "(the next_task column holds 100).",
                id="django_dbq.E006",
            )
        ]
    try:
        import_string(path)
    except ImportError as exc:
        return [
            Error(
                f"settings.JOBS[{job!r}] {what} {path!r} does not import: {exc}",
                hint="Fix the dotted path, or make the module importable.",
                id="django_dbq.E007",
            )
        ]
    return []
