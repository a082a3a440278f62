"""Least privilege enforced by the database (the functions of migrations/sql/0007_*.sql).

- Every function runs in, and names, the schema of the app's tables; those that
  run with the owner's rights pin search_path to pg_catalog, pg_temp.
- No function is executable by PUBLIC; ledger_grants grants each role its own.
- The application enqueues and saves through functions (dbq_create_job_v1,
  dbq_create_jobs_v1, dbq_update_jobs_v1); a worker proves its claims with a
  secret key (the new column lease_key holds its hash) and records only its
  outcome kinds; the ledger's guard is our own function and opens for the
  retention function alone; operators may revoke a lease (lease_revoked).
- The superseded functions are dropped, and every write right on the two tables
  and the event id sequence is revoked from every role but the owner.

Workers of an earlier release call functions this migration drops: stop them
before migrating (their jobs come back through their leases).
"""

import pgtrigger.compiler
import pgtrigger.migrations
from django.db import migrations, models

from django_dbq.roles import revoke_statements
from django_dbq.sqlfiles import drop_sql, install_sql

SQL_FILES = [
    "0007_apply.sql",
    "0007_replay.sql",
    "0007_ledger.sql",
    "0007_worker.sql",
    "0007_operations.sql",
]

PGTRIGGER_STUBS = [
    "pgtrigger_protect_projection_fb050()",
    "pgtrigger_protect_ledger_86f28()",
    "pgtrigger_apply_events_0dd6f()",
]

# Installed by migrations 0002 to 0006, superseded by the above.
OLD_FUNCTIONS = [
    "dbq_protect_projection_v1()",
    "dbq_apply_events_v3()",
    "dbq_replay_events_v3(timestamptz, uuid[], bigint)",
    "dbq_replay_events_v2(timestamptz, uuid[])",
    "dbq_apply_events_v2()",
    "dbq_requeue_jobs_v1(uuid[], text)",
    "dbq_cancel_jobs_v1(uuid[], text)",
    "dbq_append_events_v1(jsonb)",
    "dbq_expire_leases_v1(text, integer)",
    "dbq_renew_leases_v1(text, uuid[], float8)",
    "dbq_append_held_v1(text, jsonb)",
    "dbq_claim_jobs_v1(text, integer, text, text, integer, float8)",
    "dbq_delete_old_jobs_v1(timestamptz)",
    "dbq_replay_events_v1(timestamptz, uuid[])",
    "dbq_notify_waiting_v1(text[])",
    "dbq_apply_statement_v1(django_dbq_jobevent[])",
    "dbq_apply_events_v1(django_dbq_jobevent[])",
    "dbq_refuse_events_v1(django_dbq_jobevent[])",
    "dbq_event_is_illegal_v1(text, integer, jsonb, boolean, text, integer, boolean)",
    "dbq_next_state_v1(text, text, jsonb, boolean)",
]
OLD_SQL_FILES = [
    "0002_apply_events_v1.sql",
    "0002_replay_events_v1.sql",
    "0002_delete_old_jobs_v1.sql",
    "0002_claims_v1.sql",
    "0002_operations_v1.sql",
    "0003_apply_events_v2.sql",
    "0004_replay_events_v2.sql",
    "0005_replay_events_v3.sql",
    "0006_apply_events_v3.sql",
]
OLD_OWNER_RIGHTS = [
    "dbq_delete_old_jobs_v1(timestamptz)",
    "dbq_claim_jobs_v1(text, integer, text, text, integer, float8)",
    "dbq_append_held_v1(text, jsonb)",
    "dbq_renew_leases_v1(text, uuid[], float8)",
    "dbq_expire_leases_v1(text, integer)",
    "dbq_append_events_v1(jsonb)",
    "dbq_cancel_jobs_v1(uuid[], text)",
    "dbq_requeue_jobs_v1(uuid[], text)",
]


def install_functions(apps, schema_editor):
    # install_sql revokes EXECUTE from PUBLIC on every function it creates.
    for name in SQL_FILES:
        install_sql(schema_editor, "django_dbq.migrations", f"sql/{name}")


def revoke_trigger_stubs(apps, schema_editor):
    # pgtrigger writes a function per trigger even where the trigger executes
    # one of ours; those only return, but no function of ours is PUBLIC's.
    for signature in PGTRIGGER_STUBS:
        schema_editor.execute(f"REVOKE EXECUTE ON FUNCTION {signature} FROM PUBLIC", params=None)


def drop_functions(apps, schema_editor):
    for name in reversed(SQL_FILES):
        drop_sql(schema_editor, "django_dbq.migrations", f"sql/{name}")


def drop_old_functions(apps, schema_editor):
    for signature in OLD_FUNCTIONS:
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {signature}", params=None)


def reinstall_old_functions(apps, schema_editor):
    for name in OLD_SQL_FILES:
        install_sql(schema_editor, "django_dbq.migrations", f"sql/{name}")
    for signature in OLD_OWNER_RIGHTS:
        schema_editor.execute(f"REVOKE EXECUTE ON FUNCTION {signature} FROM PUBLIC", params=None)


def revoke_write_rights(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        for statement in revoke_statements(cursor):
            cursor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [
        ("django_dbq", "0006_apply_events_v3"),
    ]

    operations = [
        pgtrigger.migrations.RemoveTrigger(
            model_name="job",
            name="protect_projection",
        ),
        pgtrigger.migrations.RemoveTrigger(
            model_name="jobevent",
            name="protect_ledger",
        ),
        pgtrigger.migrations.RemoveTrigger(
            model_name="jobevent",
            name="apply_events",
        ),
        migrations.AddField(
            model_name="job",
            name="lease_key",
            field=models.CharField(editable=False, max_length=64, null=True),
        ),
        migrations.AlterField(
            model_name="jobevent",
            name="kind",
            field=models.CharField(
                choices=[
                    ("created", "Created"),
                    ("claimed", "Claimed"),
                    ("task_done", "Task Done"),
                    ("completed", "Completed"),
                    ("failed", "Failed"),
                    ("stopping", "Stopping"),
                    ("lease_renewed", "Lease Renewed"),
                    ("lease_expired", "Lease Expired"),
                    ("lease_revoked", "Lease Revoked"),
                    ("released", "Released"),
                    ("retried", "Retried"),
                    ("cancelled", "Cancelled"),
                    ("cancel_requested", "Cancel Requested"),
                    ("requeued", "Requeued"),
                    ("updated", "Updated"),
                ],
                max_length=20,
            ),
        ),
        migrations.RunPython(install_functions, drop_functions),
        pgtrigger.migrations.AddTrigger(
            model_name="job",
            trigger=pgtrigger.compiler.Trigger(
                name="protect_projection",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    execute="dbq_protect_projection_v2()",
                    func="RETURN NULL;",
                    hash="11dcf56caec6948388e1ab2d80551e2d2d8666a6",
                    level="STATEMENT",
                    operation="INSERT OR UPDATE OR DELETE OR TRUNCATE",
                    pgid="pgtrigger_protect_projection_fb050",
                    table="django_dbq_job",
                    when="BEFORE",
                ),
            ),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name="jobevent",
            trigger=pgtrigger.compiler.Trigger(
                name="protect_ledger",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    execute="dbq_protect_ledger_v1()",
                    func="RETURN NULL;",
                    hash="78049b7979c891ddc666195ef8c47699302f454f",
                    level="STATEMENT",
                    operation="UPDATE OR DELETE OR TRUNCATE",
                    pgid="pgtrigger_protect_ledger_86f28",
                    table="django_dbq_jobevent",
                    when="BEFORE",
                ),
            ),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name="jobevent",
            trigger=pgtrigger.compiler.Trigger(
                name="apply_events",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    execute="dbq_apply_events_v4()",
                    func="RETURN NULL;",
                    hash="5d8ad10689f684a18187b5cc7f7e9fed54427dc4",
                    level="STATEMENT",
                    operation="INSERT",
                    pgid="pgtrigger_apply_events_0dd6f",
                    referencing="REFERENCING NEW TABLE AS new_events ",
                    table="django_dbq_jobevent",
                    when="AFTER",
                ),
            ),
        ),
        migrations.RunPython(drop_old_functions, reinstall_old_functions),
        migrations.RunPython(revoke_trigger_stubs, migrations.RunPython.noop),
        migrations.RunPython(revoke_write_rights, migrations.RunPython.noop),
    ]
