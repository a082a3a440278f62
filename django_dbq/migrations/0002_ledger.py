"""The job ledger: the JobEvent table, the apply function and the triggers.

Jobs already in the table (a database upgraded from django-db-queue) are moved
into the ledger: each gets an imported `created` event holding its fields, and the
trigger writes its projection row back, identical to what it was. They are imported
in batches, oldest first, so that memory does not grow with the table.
"""

import django.db.models.deletion
import pgtrigger.compiler
import pgtrigger.migrations
from django.db import migrations, models

import django_dbq.events.models
from django_dbq.sqlfiles import read_sql
from django_dbq.upgrade import refuse_unexpected_ledger_start

# The jobs set aside, numbered in the order they are imported (oldest first, as
# the queue takes them), so that each batch is a range of that number.
STASH_JOBS = """
CREATE TEMP TABLE dbq_import ON COMMIT DROP AS
SELECT row_number() OVER (ORDER BY created, id) AS import_order, * FROM django_dbq_job;
CREATE UNIQUE INDEX ON dbq_import (import_order);
DELETE FROM django_dbq_job;
"""

IMPORT_BATCH = """
INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)
SELECT id, 1, 'created', jsonb_build_object(
    'imported', true,
    'name', name, 'state', state, 'next_task', next_task, 'workspace', workspace,
    'queue_name', queue_name, 'priority', priority, 'run_after', run_after,
    'created', created, 'modified', modified)
FROM dbq_import
WHERE import_order > %s AND import_order <= %s
ORDER BY import_order;
"""

# Jobs per INSERT. The ledger's statement trigger takes the rows of one INSERT as
# one array: one INSERT of a million jobs held 0.95 GB in the backend. In batches
# the import's peak is the index builds' (maintenance_work_mem), whatever the count
# (benchmarks/upgrade.py).
IMPORT_BATCH_SIZE = 10_000

# Frozen copies of what this migration installs (migrations/sql/).
SQL_FILES = [
    ("django_dbq.migrations", "sql/0002_apply_events_v1.sql"),
    ("django_dbq.migrations", "sql/0002_replay_events_v1.sql"),
    ("django_dbq.migrations", "sql/0002_delete_old_jobs_v1.sql"),
    ("django_dbq.migrations", "sql/0002_claims_v1.sql"),
    ("django_dbq.migrations", "sql/0002_operations_v1.sql"),
]

FUNCTIONS = [
    "dbq_next_state_v1(text, text, jsonb, boolean)",
    "dbq_event_is_illegal_v1(text, integer, jsonb, boolean, text, integer, boolean)",
    "dbq_refuse_events_v1(django_dbq_jobevent[])",
    "dbq_apply_events_v1(django_dbq_jobevent[])",
    "dbq_apply_statement_v1(django_dbq_jobevent[])",
    "dbq_notify_waiting_v1(text[])",
    "dbq_replay_events_v1(timestamptz, uuid[])",
    "dbq_delete_old_jobs_v1(timestamptz)",
    "dbq_claim_jobs_v1(text, integer, text, text, integer, float8)",
    "dbq_append_held_v1(text, jsonb)",
    "dbq_renew_leases_v1(text, uuid[], float8)",
    "dbq_expire_leases_v1(text, integer)",
    "dbq_append_events_v1(jsonb)",
    "dbq_cancel_jobs_v1(uuid[], text)",
    "dbq_requeue_jobs_v1(uuid[], text)",
]

# These run with the owner's rights: only the owner and roles granted them
# (manage.py ledger_grants) may call them. Retention deletes history; the others
# claim and record jobs.
OWNER_RIGHTS = [
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
    for package, path in SQL_FILES:
        schema_editor.execute(read_sql(package, path), params=None)
    for signature in OWNER_RIGHTS:
        schema_editor.execute(f"REVOKE EXECUTE ON FUNCTION {signature} FROM PUBLIC", params=None)


def import_jobs(apps, schema_editor):
    """Give every stashed job its imported `created` event, IMPORT_BATCH_SIZE per INSERT."""
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM dbq_import")
        (count,) = cursor.fetchone()
        for start in range(0, count, IMPORT_BATCH_SIZE):
            cursor.execute(IMPORT_BATCH, [start, start + IMPORT_BATCH_SIZE])


def drop_functions(apps, schema_editor):
    for signature in reversed(FUNCTIONS):
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {signature}", params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("django_dbq", "0001_squashed_0006_alter_job_state"),
    ]

    operations = [
        # A job table that is not 3.x's, or a ledger already there: say what to record.
        migrations.RunPython(refuse_unexpected_ledger_start, migrations.RunPython.noop),
        migrations.CreateModel(
            name="JobEvent",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("version", models.PositiveIntegerField()),
                (
                    "kind",
                    models.CharField(
                        choices=[
                            ("created", "Created"),
                            ("claimed", "Claimed"),
                            ("task_done", "Task Done"),
                            ("completed", "Completed"),
                            ("failed", "Failed"),
                            ("stopping", "Stopping"),
                            ("lease_renewed", "Lease Renewed"),
                            ("lease_expired", "Lease Expired"),
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
                ("payload", models.JSONField(default=dict)),
                (
                    "at",
                    models.DateTimeField(db_default=django_dbq.events.models.ClockTimestamp()),
                ),
                (
                    "job",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="events",
                        to="django_dbq.job",
                    ),
                ),
            ],
            options={"ordering": ["job_id", "version"]},
        ),
        migrations.AddIndex(
            model_name="jobevent",
            index=django_dbq.events.models.BrinIndex(
                fields=["at"], name="django_dbq_event_at_brin"
            ),
        ),
        migrations.AddConstraint(
            model_name="jobevent",
            constraint=models.UniqueConstraint(
                fields=("job", "version"), name="django_dbq_event_job_version"
            ),
        ),
        migrations.AddField(
            model_name="job",
            name="version",
            field=models.PositiveIntegerField(default=0, editable=False),
        ),
        migrations.AddField(
            model_name="job",
            name="claimed_by",
            field=models.CharField(editable=False, max_length=200, null=True),
        ),
        migrations.AddField(
            model_name="job",
            name="lease_until",
            field=models.DateTimeField(editable=False, null=True),
        ),
        migrations.AddField(
            model_name="job",
            name="attempts",
            field=models.PositiveIntegerField(default=0, editable=False),
        ),
        migrations.AddField(
            model_name="job",
            name="cancel_requested",
            field=models.BooleanField(default=False, editable=False),
        ),
        migrations.AlterField(
            model_name="job",
            name="created",
            field=models.DateTimeField(auto_now_add=True),
        ),
        migrations.AlterField(
            model_name="job",
            name="state",
            field=models.CharField(
                choices=[
                    ("NEW", "New"),
                    ("READY", "Ready"),
                    ("PROCESSING", "Processing"),
                    ("STOPPING", "Stopping"),
                    ("FAILED", "Failed"),
                    ("COMPLETE", "Complete"),
                    ("CANCELLED", "Cancelled"),
                ],
                default="NEW",
                max_length=20,
            ),
        ),
        migrations.AlterField(
            model_name="job",
            name="queue_name",
            field=models.CharField(default="default", max_length=20),
        ),
        migrations.AlterField(
            model_name="job",
            name="priority",
            field=models.SmallIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="job",
            name="run_after",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name="job",
            name="workspace",
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                models.F("queue_name"),
                models.OrderBy(models.F("priority"), descending=True),
                models.F("created"),
                condition=models.Q(("state__in", ["NEW", "READY"])),
                name="django_dbq_job_claimable",
            ),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                models.F("lease_until"),
                condition=models.Q(("state__in", ["PROCESSING", "STOPPING"])),
                name="django_dbq_job_leased",
            ),
        ),
        migrations.RunSQL(STASH_JOBS, migrations.RunSQL.noop),
        migrations.RunPython(install_functions, drop_functions),
        pgtrigger.migrations.AddTrigger(
            model_name="job",
            trigger=pgtrigger.compiler.Trigger(
                name="protect_projection",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    func="\n                IF current_setting('dbq.applying', true) = 'on' THEN\n                    RETURN NULL;\n                END IF;\n                RAISE EXCEPTION 'django_dbq: django_dbq_job is a projection of the job ledger; % on it is refused', TG_OP\n                    USING ERRCODE = 'insufficient_privilege',\n                          HINT = 'Create jobs with Job.objects.create(), change them with job.save(), or append events to django_dbq_jobevent.';\n                ",
                    hash="26805081664612b9a961b148686f7e98698168fb",
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
                    func="\n                IF TG_OP = 'DELETE' AND current_setting('dbq.retention', true) = 'on' THEN\n                    RETURN NULL;\n                END IF;\n                RAISE EXCEPTION 'django_dbq: the job ledger is append-only; % on django_dbq_jobevent is refused', TG_OP\n                    USING ERRCODE = 'insufficient_privilege',\n                          HINT = 'Record a change by appending an event; remove old finished jobs with manage.py delete_old_jobs.';\n                ",
                    hash="2f5dc4ab26a1178cecfece2edc200cf62e3c262b",
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
                    func="\n                PERFORM dbq_notify_waiting_v1(dbq_apply_statement_v1(\n                    ARRAY(SELECT e::django_dbq_jobevent FROM new_events e)\n                ));\n                RETURN NULL;\n                ",
                    hash="91f041481b4801cc516e818da1713dc5bef72e32",
                    level="STATEMENT",
                    operation="INSERT",
                    pgid="pgtrigger_apply_events_0dd6f",
                    referencing="REFERENCING NEW TABLE AS new_events ",
                    table="django_dbq_jobevent",
                    when="AFTER",
                ),
            ),
        ),
        migrations.RunPython(import_jobs, migrations.RunPython.noop),
    ]
