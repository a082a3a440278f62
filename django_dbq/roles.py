"""Least-privilege database roles for django-dbq: the GRANTs for each.

No role but the tables' owner holds a write right on either table. Every append
goes through a function that runs with the owner's rights and takes only what
the calling role may do; each role is granted its functions and SELECT:

- worker: claims jobs, records the outcomes of the jobs it holds and saves them
  (proved by its secret key, under a live lease), renews its leases, expires
  lapsed ones, enqueues jobs (tasks may) and the due ticks of schedules
  (periodic jobs, each tick once), and seals the ledger (DBQ_SEAL_SECONDS); it
  saves no job it does not hold.
- app (the web application, the admin, operators' commands): enqueues
  (`created` in a state a creation allows), saves (`updated`), cancels,
  requeues, releases jobs whose worker is gone, creates unique jobs (and
  replaces the waiting one that holds a key: an `updated` event), and pauses and resumes queues
  (the queue ledger's `paused` and `resumed`).
- maintenance: runs delete_old_jobs (the retention function, which signs the
  retirement records of the sealed events it removes) and seal_ledger, and
  nothing else.

Every role may also read the past: as_of, job_history --as-of and replay_events
--verify rebuild the projection into a TEMP table of their own session, through
functions that run with the caller's rights (AUDIT_FUNCTIONS; the role needs
TEMP on the database, which PUBLIC holds by default). Replay itself rebuilds the
live projection and needs the tables' owner (the role that ran the migrations).
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

TABLES = (
    "django_dbq_job",
    "django_dbq_jobevent",
    "django_dbq_queue",
    "django_dbq_queueevent",
    "django_dbq_schedule",
    "django_dbq_seal",
    "django_dbq_retired",
)
SEQUENCES = (
    "django_dbq_jobevent_id_seq",
    "django_dbq_queueevent_id_seq",
    "django_dbq_retired_id_seq",
)
APP_FUNCTIONS = (
    "dbq_create_job_v2(uuid, jsonb)",
    "dbq_create_jobs_v2(jsonb)",
    "dbq_create_jobs_v3(uuid[], jsonb, integer[])",
    "dbq_create_unique_jobs_v1(jsonb)",
    "dbq_replace_unique_jobs_v1(jsonb)",
    "dbq_update_jobs_v2(jsonb)",
    "dbq_cancel_jobs_v2(uuid[], text)",
    "dbq_requeue_jobs_v2(uuid[], text)",
    "dbq_release_jobs_v1(uuid[], text)",
    "dbq_pause_queue_v1(text, text, text)",
    "dbq_resume_queue_v1(text, text)",
    # Superseded by migration 0011, kept for the previous release's processes
    # while a rolling deploy replaces them.
    "dbq_create_job_v1(uuid, jsonb)",
    "dbq_create_jobs_v1(jsonb)",
    "dbq_update_jobs_v1(jsonb)",
)
WORKER_FUNCTIONS = (
    "dbq_claim_jobs_v4(text, integer, text, text, text, integer, float8, text[])",
    "dbq_record_outcomes_v1(text, jsonb)",
    "dbq_record_and_claim_v3(text, jsonb, text, integer, text, text, integer, float8, text[])",
    "dbq_renew_leases_v2(text, uuid[], float8)",
    "dbq_expire_leases_v4(text, integer, jsonb)",
    # A task saves the job it runs (job.save()), proved by the worker's key.
    "dbq_save_held_v2(text, jsonb)",
    # What a failure hook changed in the job the worker has just failed.
    "dbq_save_failed_v1(text, jsonb)",
    # Enqueue the due ticks of the schedules of settings.JOBS (periodic jobs).
    "dbq_enqueue_ticks_v1(text, jsonb)",
    # Seal the ledger (DBQ_SEAL_SECONDS); the mac is the worker's.
    "dbq_prepare_seal_v1(integer)",
    "dbq_sign_seal_v1(bigint, bytea)",
    # A task may enqueue more jobs.
    "dbq_create_job_v2(uuid, jsonb)",
    "dbq_create_jobs_v2(jsonb)",
    "dbq_create_jobs_v3(uuid[], jsonb, integer[])",
    "dbq_create_unique_jobs_v1(jsonb)",
    # Superseded by migrations 0008, 0011 and 0013, kept for workers of the
    # previous releases while a rolling deploy replaces them.
    "dbq_save_held_v1(text, jsonb)",
    "dbq_expire_leases_v3(text, integer, jsonb)",
    "dbq_create_job_v1(uuid, jsonb)",
    "dbq_create_jobs_v1(jsonb)",
    "dbq_claim_jobs_v2(text, integer, text, text, text, integer, float8, text[])",
    "dbq_record_and_claim_v1(text, jsonb, text, integer, text, text, integer, float8, text[])",
    "dbq_expire_leases_v2(text, integer)",
    "dbq_claim_jobs_v3(text, integer, text, text, text, integer, float8, text[])",
    "dbq_record_and_claim_v2(text, jsonb, text, integer, text, text, integer, float8, text[])",
)
RETENTION_FUNCTIONS = (
    "dbq_delete_old_jobs_v5(timestamptz, uuid, integer)",
    "dbq_delete_old_jobs_v4(timestamptz)",
    # Signs the retirement records of the sealed events retention removed.
    "dbq_sign_retired_v1(bigint[], bytea[])",
    # manage.py seal_ledger.
    "dbq_prepare_seal_v1(integer)",
    "dbq_sign_seal_v1(bigint, bytea)",
    # Superseded by migration 0017 (it keeps sealed jobs), kept for the previous
    # release's processes while a rolling deploy replaces them.
    "dbq_delete_old_jobs_v3(timestamptz)",
)
# The audit reads (projections/scratch.py) and the pure functions the fold calls;
# all run with the caller's rights and write only the caller's TEMP tables.
AUDIT_FUNCTIONS = (
    "dbq_replay_events_scratch_v5(timestamptz, uuid[], bigint)",
    "dbq_replay_copy_scratch_v5(timestamptz, uuid[], bigint)",
    "dbq_fold_events_scratch_v2(django_dbq_jobevent[])",
    "dbq_refuse_events_scratch_v2(django_dbq_jobevent[])",
    "dbq_next_state_v2(text, text, jsonb, boolean)",
    "dbq_event_is_illegal_v2(text, integer, jsonb, boolean, text, integer, boolean)",
    "dbq_job_row_v2(uuid, integer, jsonb, timestamptz, bytea)",
    # The ledger's proof (verify recomputes hashes and seals' windows).
    "dbq_event_hash_text_v1(bytea, uuid, integer, text, text, timestamptz)",
    "dbq_event_hash_v1(bytea, uuid, integer, text, jsonb, timestamptz)",
    "dbq_seal_window_v1(bigint, bigint, bigint)",
    "dbq_time_v1(text)",
    "dbq_refuse_time_v1(text)",
    # The queue ledger's (verify).
    "dbq_replay_queue_events_scratch_v1()",
    "dbq_replay_queue_copy_scratch_v1()",
    "dbq_fold_queue_events_scratch_v1(django_dbq_queueevent[])",
    "dbq_refuse_queue_events_scratch_v1(django_dbq_queueevent[])",
    "dbq_queue_event_is_illegal_v1(text, integer, boolean, integer)",
)
# What no role but the owner may hold on the tables and the event id sequences.
WRITE_RIGHTS = "INSERT, UPDATE, DELETE, TRUNCATE, TRIGGER"
SEQUENCE_RIGHTS = "USAGE, UPDATE"

# Of the tables and sequences, those that exist: migration 0007 revokes with
# this module before migrations 0013 and 0015 made the queue and schedule tables.
_EXISTING = "SELECT r FROM unnest(%s::text[]) r WHERE to_regclass(r) IS NOT NULL"
_GRANTEES = """
SELECT DISTINCT a.grantee
FROM pg_catalog.pg_class c, LATERAL aclexplode(c.relacl) a
WHERE c.oid IN (SELECT to_regclass(r) FROM unnest(%s::text[]) r)
  AND a.grantee <> c.relowner
  AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'TRIGGER', 'USAGE')
"""


def grant_statements(
    worker: str | None = None, app: str | None = None, maintenance: str | None = None
) -> list[sql.Composable]:
    """The GRANT statements that give each named role exactly what it needs."""
    statements: list[sql.Composable] = []
    for role, functions in (
        (worker, WORKER_FUNCTIONS),
        (app, APP_FUNCTIONS),
        (maintenance, RETENTION_FUNCTIONS),
    ):
        if role:
            statements += _read(role) + _execute(role, functions + AUDIT_FUNCTIONS)
    return statements


def revoke_statements(cursor: Any) -> list[sql.Composable]:
    """REVOKEs of every write right that a role other than the owner holds on the tables."""
    cursor.execute(_GRANTEES, [[*TABLES, *SEQUENCES]])
    grantees = [grantee for (grantee,) in cursor.fetchall()]
    tables, sequences = _existing(cursor, TABLES), _existing(cursor, SEQUENCES)
    statements: list[sql.Composable] = []
    for grantee in grantees:
        role = sql.SQL("PUBLIC") if grantee == 0 else sql.Identifier(_role_name(cursor, grantee))
        statements.append(
            sql.SQL("REVOKE {} ON {} FROM {}").format(sql.SQL(WRITE_RIGHTS), tables, role)
        )
        statements.append(
            sql.SQL("REVOKE {} ON SEQUENCE {} FROM {}").format(
                sql.SQL(SEQUENCE_RIGHTS), sequences, role
            )
        )
    return statements


def _existing(cursor: Any, names: tuple[str, ...]) -> sql.Composable:
    cursor.execute(_EXISTING, [list(names)])
    return sql.SQL(", ").join(sql.Identifier(name) for (name,) in cursor.fetchall())


# Roles other than the function's owner that may execute it (PUBLIC may not).
_FUNCTION_GRANTEES = """
SELECT r.rolname
FROM pg_catalog.pg_proc p, LATERAL aclexplode(p.proacl) a
JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
WHERE p.oid = %s::regprocedure AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
"""


def grant_like(cursor: Any, old: str, new: str) -> None:
    """GRANT EXECUTE on function `new` to every role (but its owner) that may execute `old`.

    For migrations that supersede a function: its callers keep their rights
    without a new ledger_grants. Both are signatures, e.g. 'f_v2(text, integer)'.
    """
    cursor.execute(_FUNCTION_GRANTEES, [old])
    for (role,) in cursor.fetchall():
        cursor.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(new), sql.Identifier(role))
        )


# Roles other than the table's owner that may SELECT from it.
_TABLE_READERS = """
SELECT DISTINCT r.rolname
FROM pg_catalog.pg_class c, LATERAL aclexplode(c.relacl) a
JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
WHERE c.oid = %s::regclass AND a.privilege_type = 'SELECT' AND a.grantee <> c.relowner
"""


def grant_select_like(cursor: Any, old: str, new: str) -> None:
    """GRANT SELECT on table `new` to every role (but its owner) that may read table `old`.

    For migrations that add a table roles read: e.g. the workers' and the
    application's roles read django_dbq_queue as they read django_dbq_job.
    """
    cursor.execute(_TABLE_READERS, [old])
    for (role,) in cursor.fetchall():
        cursor.execute(
            sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(new), sql.Identifier(role))
        )


def _role_name(cursor: Any, oid: int) -> str:
    cursor.execute("SELECT rolname FROM pg_catalog.pg_roles WHERE oid = %s", [oid])
    return cursor.fetchone()[0]


def _read(role: str) -> list[sql.Composable]:
    return [
        sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), sql.Identifier(role))
        for table in TABLES
    ]


def _execute(role: str, functions: tuple[str, ...]) -> list[sql.Composable]:
    # Signatures are constants of this module, never user input.
    return [
        sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(f), sql.Identifier(role))
        for f in functions
    ]
