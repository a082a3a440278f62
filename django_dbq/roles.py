"""Least-privilege database roles for django-dbq: the GRANTs for each.

- worker: reads the projection and the ledger, appends events, claims and
  acknowledges jobs through the claim functions; it cannot change or delete an
  event, nor write the projection.
- app (the web application): reads, enqueues (appends `created` events), saves,
  cancels and requeues jobs; it cannot claim jobs, change or delete events, nor
  write the projection.
- maintenance: runs delete_old_jobs (the retention function), and nothing else.

Replay rebuilds the projection and needs the tables' owner (the role that ran
the migrations).
"""

from __future__ import annotations

from psycopg import sql

TABLES = ("django_dbq_job", "django_dbq_jobevent")
SAVE_FUNCTIONS = ("dbq_append_events_v1(jsonb)",)
OPERATOR_FUNCTIONS = ("dbq_cancel_jobs_v1(uuid[], text)", "dbq_requeue_jobs_v1(uuid[], text)")
WORKER_FUNCTIONS = (
    "dbq_claim_jobs_v1(text, integer, text, text, integer, float8)",
    "dbq_append_held_v1(text, jsonb)",
    "dbq_renew_leases_v1(text, uuid[], float8)",
    "dbq_expire_leases_v1(text, integer)",
    *SAVE_FUNCTIONS,
)
RETENTION_FUNCTIONS = ("dbq_delete_old_jobs_v1(timestamptz)",)


def grant_statements(
    worker: str | None = None, app: str | None = None, maintenance: str | None = None
) -> list[sql.Composable]:
    """The GRANT statements that give each named role exactly what it needs."""
    statements: list[sql.Composable] = []
    if worker:
        statements += _read(worker) + _append(worker) + _execute(worker, WORKER_FUNCTIONS)
    if app:
        statements += _read(app) + _append(app)
        statements += _execute(app, SAVE_FUNCTIONS + OPERATOR_FUNCTIONS)
    if maintenance:
        statements += _read(maintenance) + _execute(maintenance, RETENTION_FUNCTIONS)
    return statements


def _read(role: str) -> list[sql.Composable]:
    return [
        sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), sql.Identifier(role))
        for table in TABLES
    ]


def _append(role: str) -> list[sql.Composable]:
    return [
        sql.SQL("GRANT INSERT ON django_dbq_jobevent TO {}").format(sql.Identifier(role)),
        # The event id is an identity column; its sequence is used on insert.
        sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(
            sql.Identifier("django_dbq_jobevent_id_seq"), sql.Identifier(role)
        ),
    ]


def _execute(role: str, functions: tuple[str, ...]) -> list[sql.Composable]:
    # Signatures are constants of this module, never user input.
    return [
        sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(f), sql.Identifier(role))
        for f in functions
    ]
