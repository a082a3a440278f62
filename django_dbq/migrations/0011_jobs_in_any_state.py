"""Jobs created in any of django-db-queue's states; a save may set `created` (migrations/sql/0011_*.sql).

- dbq_create_job_v2 and dbq_create_jobs_v2 create a job in any of the six
  states django-db-queue 3.3 had, PROCESSING and STOPPING included: such a job
  is held by no worker, and lease expiry gives it back to its queue.
- dbq_save_failed_v1 (granted to the roles that may run dbq_save_held_v1):
  the worker records what a failure hook and the post-task hook after it
  changed in the job it has just failed, as django-db-queue saved the job after
  its hooks.
- dbq_expire_leases_v4 takes jobs without a key (imported, or created PROCESSING
  or STOPPING) max_jobs at a time, apart from the lost workers' jobs, so that
  many of them cannot make a heartbeat's expiry slow.
- Times a client writes (run_after, a saved created) must name a year from 2
  to 9998 (dbq_is_time_in_range_v1), so that every client can load them.
- dbq_update_jobs_v2 and dbq_save_held_v2 take `created` among a save's fields
  (django-db-queue's users age a job that way before delete_old); the fold
  (dbq_fold_events_v2, called by the ledger's trigger dbq_apply_events_v5 and
  by replay, dbq_replay_events_v5) applies it, and the audit reads' generated
  functions follow (0011_audit_reads.sql, from projections.scratch).

Every role that may execute a superseded function is granted its successor.
The way back refuses while the ledger holds saves of `created`.
The superseded create, update and save functions stay for the previous
release's processes during a rolling deploy; the superseded fold, trigger,
replay and audit functions are dropped (the trigger no longer calls them, and
replay and audit reads run from the release that migrated).
"""

import pgtrigger.compiler
import pgtrigger.migrations
from django.db import migrations

from django_dbq.exceptions import MigrationHistoryError
from django_dbq.roles import grant_like
from django_dbq.sqlfiles import install_sql

SQL_FILES = [
    "0011_apply.sql",
    "0011_replay.sql",
    "0011_ledger.sql",
    "0011_worker.sql",
    "0011_audit_reads.sql",
]

# Created by this migration (the rest of its files is as installed before).
NEW_FUNCTIONS = [
    "dbq_is_time_in_range_v1(text)",
    "dbq_check_time_in_range_v1(text, text)",
    "dbq_is_creatable_v2(jsonb)",
    "dbq_check_created_v2(uuid, jsonb)",
    "dbq_create_job_v2(uuid, jsonb)",
    "dbq_create_jobs_v2(jsonb)",
    "dbq_is_saved_fields_v1(jsonb)",
    "dbq_refuse_save_v1(text, jsonb)",
    "dbq_update_jobs_v2(jsonb)",
    "dbq_append_updates_v2(jsonb, text)",
    "dbq_save_held_v2(text, jsonb)",
    "dbq_save_failed_v1(text, jsonb)",
    "dbq_expire_leases_v4(text, integer, jsonb)",
    "dbq_fold_events_v2(django_dbq_jobevent[])",
    "dbq_apply_events_v5()",
    "dbq_replay_events_v5(timestamptz, uuid[], bigint)",
    "dbq_fold_events_scratch_v2(django_dbq_jobevent[])",
    "dbq_replay_events_scratch_v5(timestamptz, uuid[], bigint)",
    "dbq_replay_copy_scratch_v5(timestamptz, uuid[], bigint)",
]

# (old, new): every role that may execute old is granted new.
GRANTS_LIKE = [
    ("dbq_create_job_v1(uuid, jsonb)", "dbq_create_job_v2(uuid, jsonb)"),
    ("dbq_create_jobs_v1(jsonb)", "dbq_create_jobs_v2(jsonb)"),
    ("dbq_update_jobs_v1(jsonb)", "dbq_update_jobs_v2(jsonb)"),
    ("dbq_save_held_v1(text, jsonb)", "dbq_save_held_v2(text, jsonb)"),
    # A new function, for the roles that save the jobs they run.
    ("dbq_save_held_v1(text, jsonb)", "dbq_save_failed_v1(text, jsonb)"),
    ("dbq_expire_leases_v3(text, integer, jsonb)", "dbq_expire_leases_v4(text, integer, jsonb)"),
    (
        "dbq_fold_events_scratch_v1(django_dbq_jobevent[])",
        "dbq_fold_events_scratch_v2(django_dbq_jobevent[])",
    ),
    (
        "dbq_replay_events_scratch_v4(timestamptz, uuid[], bigint)",
        "dbq_replay_events_scratch_v5(timestamptz, uuid[], bigint)",
    ),
    (
        "dbq_replay_copy_scratch_v4(timestamptz, uuid[], bigint)",
        "dbq_replay_copy_scratch_v5(timestamptz, uuid[], bigint)",
    ),
]

# Superseded and no longer called: dropped, reinstalled on the way back.
DROPPED = [
    "dbq_replay_copy_scratch_v4(timestamptz, uuid[], bigint)",
    "dbq_replay_events_scratch_v4(timestamptz, uuid[], bigint)",
    "dbq_fold_events_scratch_v1(django_dbq_jobevent[])",
    "dbq_replay_events_v4(timestamptz, uuid[], bigint)",
    "dbq_apply_events_v4()",
    "dbq_fold_events_v1(django_dbq_jobevent[])",
]
DROPPED_FROM = ["0007_apply.sql", "0007_replay.sql", "0009_audit_reads.sql"]

TRIGGER_STUB = "pgtrigger_apply_events_0dd6f()"


def _grant(schema_editor, pairs):
    with schema_editor.connection.cursor() as cursor:
        for old, new in pairs:
            grant_like(cursor, old, new)


def install_functions(apps, schema_editor):
    # install_sql revokes EXECUTE from PUBLIC on every function it creates.
    for name in SQL_FILES:
        install_sql(schema_editor, "django_dbq.migrations", f"sql/{name}")
    _grant(schema_editor, GRANTS_LIKE)


def drop_new_functions(apps, schema_editor):
    # The functions of 0010 fold `updated` events without `created`: replayed by
    # them, such a ledger would give other rows than the live ones.
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM django_dbq_jobevent WHERE kind = 'updated' AND payload ? 'created'"
        )
        (saved,) = cursor.fetchone()
    if saved:
        raise MigrationHistoryError(
            f"django_dbq: {saved} saves in the ledger set a job's created time, which the "
            "functions before 0011 cannot replay; migrating back would leave a projection "
            "that replay_events --verify reports as drifted. Stay on 0011 or later."
        )
    for signature in reversed(NEW_FUNCTIONS):
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {signature}", params=None)


def revoke_trigger_stub(apps, schema_editor):
    # pgtrigger writes a function per trigger even where it executes one of ours;
    # it only returns, but no function of ours is PUBLIC's.
    schema_editor.execute(f"REVOKE EXECUTE ON FUNCTION {TRIGGER_STUB} FROM PUBLIC", params=None)


def drop_superseded(apps, schema_editor):
    for signature in DROPPED:
        schema_editor.execute(f"DROP FUNCTION {signature}", params=None)


def reinstall_superseded(apps, schema_editor):
    for name in DROPPED_FROM:
        install_sql(schema_editor, "django_dbq.migrations", f"sql/{name}")
    _grant(schema_editor, ((new, old) for old, new in GRANTS_LIKE if old in DROPPED))


class Migration(migrations.Migration):
    dependencies = [
        ("django_dbq", "0010_retention_keeps_referenced_jobs"),
    ]

    operations = [
        migrations.RunPython(install_functions, drop_new_functions),
        # On the way back, after the trigger is the previous one again.
        migrations.RunPython(migrations.RunPython.noop, revoke_trigger_stub),
        pgtrigger.migrations.RemoveTrigger(
            model_name="jobevent",
            name="apply_events",
        ),
        pgtrigger.migrations.AddTrigger(
            model_name="jobevent",
            trigger=pgtrigger.compiler.Trigger(
                name="apply_events",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    execute="dbq_apply_events_v5()",
                    func="RETURN NULL;",
                    hash="9b06854f6d8c2473e43391d0083e8264d40f4fab",
                    level="STATEMENT",
                    operation="INSERT",
                    pgid="pgtrigger_apply_events_0dd6f",
                    referencing="REFERENCING NEW TABLE AS new_events ",
                    table="django_dbq_jobevent",
                    when="AFTER",
                ),
            ),
        ),
        migrations.RunPython(revoke_trigger_stub, migrations.RunPython.noop),
        migrations.RunPython(drop_superseded, reinstall_superseded),
    ]
