"""Pausing queues: the queue ledger, its projection, and claims that honour a pause
(the functions of migrations/sql/0013_*.sql).

- django_dbq_queueevent, the queue ledger (`paused`, `resumed`; append-only,
  trigger protect_queue_ledger), and django_dbq_queue, its projection (a row per
  queue ever paused, written only by the ledger's trigger apply_queue_events,
  which also wakes a resumed queue's workers; guard protect_queue_projection).
- dbq_pause_queue_v1 and dbq_resume_queue_v1, for the roles that may cancel
  jobs (the app role).
- dbq_claim_jobs_v4 and dbq_record_and_claim_v3 claim nothing from a paused
  queue, for the roles that may run the ones they supersede, which stay for
  workers of the previous release during a rolling deploy (those do not honour
  pauses).
- The fold and replay of the queue ledger, and the audit reads' variants
  generated from them (0013_queue_audit_reads.sql, from projections.scratch),
  for the roles that may run the job ledger's audit reads.

Every role that may read django_dbq_job is granted SELECT on both new tables.
"""

import django.db.models.deletion
import pgtrigger.compiler
import pgtrigger.migrations
from django.db import migrations, models

import django_dbq.events.models
from django_dbq.roles import grant_like, grant_select_like
from django_dbq.sqlfiles import install_sql

SQL_FILES = [
    "0013_queue_projection.sql",
    "0013_queue_ledger.sql",
    "0013_worker.sql",
    "0013_queue_audit_reads.sql",
]

# Created by this migration (the rest of its files is as installed before).
NEW_FUNCTIONS = [
    "dbq_queue_event_is_illegal_v1(text, integer, boolean, integer)",
    "dbq_refuse_queue_events_v1(django_dbq_queueevent[])",
    "dbq_fold_queue_events_v1(django_dbq_queueevent[])",
    "dbq_apply_queue_events_v1()",
    "dbq_protect_queue_projection_v1()",
    "dbq_replay_queue_events_v1()",
    "dbq_protect_queue_ledger_v1()",
    "dbq_check_queue_change_v1(text, text, text)",
    "dbq_pause_queue_v1(text, text, text)",
    "dbq_resume_queue_v1(text, text)",
    "dbq_claim_jobs_v4(text, integer, text, text, text, integer, float8, text[])",
    "dbq_record_and_claim_v3(text, jsonb, text, integer, text, text, integer, float8, text[])",
    "dbq_refuse_queue_events_scratch_v1(django_dbq_queueevent[])",
    "dbq_fold_queue_events_scratch_v1(django_dbq_queueevent[])",
    "dbq_replay_queue_events_scratch_v1()",
    "dbq_replay_queue_copy_scratch_v1()",
]

AUDIT = "dbq_replay_events_scratch_v5(timestamptz, uuid[], bigint)"
# (old, new): every role that may execute old is granted new.
GRANTS_LIKE = [
    (
        "dbq_claim_jobs_v3(text, integer, text, text, text, integer, float8, text[])",
        "dbq_claim_jobs_v4(text, integer, text, text, text, integer, float8, text[])",
    ),
    (
        "dbq_record_and_claim_v2(text, jsonb, text, integer, text, text, integer, float8, text[])",
        "dbq_record_and_claim_v3(text, jsonb, text, integer, text, text, integer, float8, text[])",
    ),
    # New functions, for the roles that act on jobs as operators, and for those
    # that may run audit reads.
    ("dbq_cancel_jobs_v2(uuid[], text)", "dbq_pause_queue_v1(text, text, text)"),
    ("dbq_cancel_jobs_v2(uuid[], text)", "dbq_resume_queue_v1(text, text)"),
    (AUDIT, "dbq_queue_event_is_illegal_v1(text, integer, boolean, integer)"),
    (AUDIT, "dbq_refuse_queue_events_scratch_v1(django_dbq_queueevent[])"),
    (AUDIT, "dbq_fold_queue_events_scratch_v1(django_dbq_queueevent[])"),
    (AUDIT, "dbq_replay_queue_events_scratch_v1()"),
    (AUDIT, "dbq_replay_queue_copy_scratch_v1()"),
]

TRIGGER_STUBS = [
    "pgtrigger_protect_queue_projection_9a616()",
    "pgtrigger_protect_queue_ledger_d1899()",
    "pgtrigger_apply_queue_events_8a36a()",
]


def install_functions(apps, schema_editor):
    # install_sql revokes EXECUTE from PUBLIC on every function it creates.
    for name in SQL_FILES:
        install_sql(schema_editor, "django_dbq.migrations", f"sql/{name}")
    with schema_editor.connection.cursor() as cursor:
        for old, new in GRANTS_LIKE:
            grant_like(cursor, old, new)
        for table in ("django_dbq_queue", "django_dbq_queueevent"):
            grant_select_like(cursor, "django_dbq_job", table)


def drop_new_functions(apps, schema_editor):
    # After the triggers are gone on the way back: pgtrigger leaves their stubs.
    for signature in [*TRIGGER_STUBS, *reversed(NEW_FUNCTIONS)]:
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {signature}", params=None)


def revoke_trigger_stubs(apps, schema_editor):
    # pgtrigger writes a function per trigger even where it executes one of ours;
    # they only return, but no function of ours is PUBLIC's.
    for signature in TRIGGER_STUBS:
        schema_editor.execute(f"REVOKE EXECUTE ON FUNCTION {signature} FROM PUBLIC", params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("django_dbq", "0011_jobs_in_any_state"),
    ]

    operations = [
        migrations.CreateModel(
            name="Queue",
            fields=[
                ("name", models.CharField(max_length=20, primary_key=True, serialize=False)),
                ("paused", models.BooleanField()),
                ("reason", models.TextField(null=True)),
                ("by", models.TextField(null=True)),
                ("role", models.TextField()),
                ("since", models.DateTimeField()),
                ("version", models.PositiveIntegerField()),
            ],
            options={
                "ordering": ["name"],
            },
        ),
        migrations.CreateModel(
            name="QueueEvent",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("version", models.PositiveIntegerField()),
                (
                    "kind",
                    models.CharField(
                        choices=[("paused", "Paused"), ("resumed", "Resumed")], max_length=20
                    ),
                ),
                ("payload", models.JSONField(default=dict)),
                (
                    "at",
                    models.DateTimeField(db_default=django_dbq.events.models.ClockTimestamp()),
                ),
                (
                    "queue",
                    models.ForeignKey(
                        db_column="queue_name",
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="events",
                        to="django_dbq.queue",
                    ),
                ),
            ],
            options={
                "ordering": ["queue_id", "version"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("queue", "version"), name="django_dbq_queueevent_version"
                    )
                ],
            },
        ),
        # The functions name the new tables' row types: after the tables, before
        # the triggers that execute them.
        migrations.RunPython(install_functions, drop_new_functions),
        pgtrigger.migrations.AddTrigger(
            model_name="queue",
            trigger=pgtrigger.compiler.Trigger(
                name="protect_queue_projection",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    execute="dbq_protect_queue_projection_v1()",
                    func="RETURN NULL;",
                    hash="1b3e2b72b4e7fad97054a33edcd57d7fb1be3836",
                    level="STATEMENT",
                    operation="INSERT OR UPDATE OR DELETE OR TRUNCATE",
                    pgid="pgtrigger_protect_queue_projection_9a616",
                    table="django_dbq_queue",
                    when="BEFORE",
                ),
            ),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name="queueevent",
            trigger=pgtrigger.compiler.Trigger(
                name="protect_queue_ledger",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    execute="dbq_protect_queue_ledger_v1()",
                    func="RETURN NULL;",
                    hash="7cba5fba6360949bf20a138aeccc50ba44704b9c",
                    level="STATEMENT",
                    operation="UPDATE OR DELETE OR TRUNCATE",
                    pgid="pgtrigger_protect_queue_ledger_d1899",
                    table="django_dbq_queueevent",
                    when="BEFORE",
                ),
            ),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name="queueevent",
            trigger=pgtrigger.compiler.Trigger(
                name="apply_queue_events",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    execute="dbq_apply_queue_events_v1()",
                    func="RETURN NULL;",
                    hash="7d719223b7891604d915a102f8f690112c0f40da",
                    level="STATEMENT",
                    operation="INSERT",
                    pgid="pgtrigger_apply_queue_events_8a36a",
                    referencing="REFERENCING NEW TABLE AS new_events ",
                    table="django_dbq_queueevent",
                    when="AFTER",
                ),
            ),
        ),
        migrations.RunPython(revoke_trigger_stubs, migrations.RunPython.noop),
    ]
