"""A tamper-evident ledger: a hash chain per job and signed seals (migrations/sql/0017_*.sql).

- django_dbq_jobevent.hash: SHA-256(the job's previous hash || the event's
  canonical bytes), computed by the database: in the INSERT of the hot paths
  (enqueue, claim, outcomes), by a row trigger for every other append
  (dbq_chain_event_v1, fired only for a row without its hash).
  django_dbq_job.head: the hash of the job's last event.
- django_dbq_seal and django_dbq_retired, append-only (dbq_protect_proof_v1):
  seals (dbq_prepare_seal_v1, dbq_sign_seal_v1; for the workers and the
  maintenance role) and the retirement records retention writes for the
  sealed events it removes (dbq_delete_old_jobs_v4, dbq_sign_retired_v1; for
  the maintenance role). dbq_delete_old_jobs_v3, for the previous release's
  processes, keeps every sealed job.
- The fold and the apply trigger keep the head; the creates, claim and
  outcomes functions bring their hashes (replaced in place: same arguments,
  same results). dbq_job_row_v2 replaces dbq_job_row_v1 (the row has a new
  column). The audit reads' fold follows (0017_audit_reads.sql).

Events appended before this migration get their hashes from migration 0018.
The way back installs what was there before (0017_back*.sql) and drops the
columns and tables; the ledger then no longer proves anything.
"""

import pgtrigger.compiler
import pgtrigger.migrations
from django.db import migrations, models

from django_dbq.roles import grant_like, grant_select_like
from django_dbq.sqlfiles import install_sql

SQL_FILES = [
    "sql/0017_seals.sql",
    "sql/0017_ledger.sql",
    "sql/0017_worker.sql",
    "sql/0017_apply.sql",
    "sql/0017_audit_reads.sql",
]
ROW_V1 = "dbq_job_row_v1(uuid, integer, jsonb, timestamptz)"
ROW_V2 = "dbq_job_row_v2(uuid, integer, jsonb, timestamptz, bytea)"
RETENTION_V3 = "dbq_delete_old_jobs_v3(timestamptz)"
CLAIM = "dbq_claim_jobs_v4(text, integer, text, text, text, integer, float8, text[])"
AUDIT = "dbq_time_v1(text)"
# Granted like an existing function: (like, new).
GRANTS = [
    (ROW_V1, ROW_V2),
    (AUDIT, "dbq_event_hash_text_v1(bytea, uuid, integer, text, text, timestamptz)"),
    (AUDIT, "dbq_event_hash_v1(bytea, uuid, integer, text, jsonb, timestamptz)"),
    (AUDIT, "dbq_seal_window_v1(bigint, bigint, bigint)"),
    # The workers first, as ledger_grants grants them.
    (CLAIM, "dbq_prepare_seal_v1(integer)"),
    (CLAIM, "dbq_sign_seal_v1(bigint, bytea)"),
    (RETENTION_V3, "dbq_delete_old_jobs_v4(timestamptz)"),
    (RETENTION_V3, "dbq_sign_retired_v1(bigint[], bytea[])"),
    (RETENTION_V3, "dbq_prepare_seal_v1(integer)"),
    (RETENTION_V3, "dbq_sign_seal_v1(bigint, bytea)"),
]
NEW_FUNCTIONS = [
    "dbq_chain_event_v1()",
    "dbq_require_mac_v1()",
    "dbq_protect_proof_v1()",
    "dbq_sign_retired_v1(bigint[], bytea[])",
    "dbq_sign_seal_v1(bigint, bytea)",
    "dbq_prepare_seal_v1(integer)",
    "dbq_seal_window_v1(bigint, bigint, bigint)",
    "dbq_committed_event_id_v1(integer)",
    "dbq_event_hash_v1(bytea, uuid, integer, text, jsonb, timestamptz)",
    "dbq_event_hash_text_v1(bytea, uuid, integer, text, text, timestamptz)",
    "dbq_delete_old_jobs_v4(timestamptz)",
    "dbq_retire_old_jobs_v1(timestamptz, boolean)",
    ROW_V2,
]

COLUMNS = "ALTER TABLE django_dbq_job ADD COLUMN head bytea"
DROP_COLUMNS = "ALTER TABLE django_dbq_job DROP COLUMN head"


def install_functions(apps, schema_editor):
    # install_sql revokes EXECUTE from PUBLIC on every function it creates.
    for name in SQL_FILES:
        install_sql(schema_editor, "django_dbq.migrations", name)
    with schema_editor.connection.cursor() as cursor:
        for like, new in GRANTS:
            grant_like(cursor, like, new)
        grant_select_like(cursor, "django_dbq_job", "django_dbq_seal")
        grant_select_like(cursor, "django_dbq_job", "django_dbq_retired")
    # The fold and the apply trigger now call dbq_job_row_v2.
    schema_editor.execute(f"DROP FUNCTION {ROW_V1}", params=None)


def restore_functions(apps, schema_editor):
    for name in ("sql/0017_back.sql", "sql/0011_audit_reads.sql"):
        install_sql(schema_editor, "django_dbq.migrations", name)
    # After the triggers are gone on the way back: pgtrigger leaves their stubs.
    for signature in [*TRIGGER_STUBS, *NEW_FUNCTIONS]:
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {signature}", params=None)


TRIGGER_STUBS = [
    "pgtrigger_chain_event_d15a4()",
    "pgtrigger_retired_signed_ff234()",
    "pgtrigger_seal_signed_37b7d()",
    "pgtrigger_protect_retired_40c35()",
    "pgtrigger_protect_seals_cb6b2()",
]


def revoke_trigger_stubs(apps, schema_editor):
    # pgtrigger writes a function per trigger even where it executes one of ours;
    # they only return, but no function of ours is PUBLIC's.
    for signature in TRIGGER_STUBS:
        schema_editor.execute(f"REVOKE EXECUTE ON FUNCTION {signature} FROM PUBLIC", params=None)


def restore_job_row(apps, schema_editor):
    # On the way back, once the head column is gone: the row without it.
    install_sql(schema_editor, "django_dbq.migrations", "sql/0017_back_row.sql")
    with schema_editor.connection.cursor() as cursor:
        grant_like(cursor, AUDIT, ROW_V1)


class Migration(migrations.Migration):
    dependencies = [
        ("django_dbq", "0016_create_jobs_v3"),
    ]

    operations = [
        migrations.RunPython(migrations.RunPython.noop, restore_job_row),
        migrations.CreateModel(
            name="Retired",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("seal_id", models.BigIntegerField(db_index=True)),
                ("retired_at", models.DateTimeField()),
                ("events", models.BigIntegerField()),
                ("entries", models.BinaryField()),
                ("txid", models.BigIntegerField()),
                ("mac", models.BinaryField(null=True)),
            ],
            options={
                "ordering": ["id"],
            },
        ),
        migrations.CreateModel(
            name="Seal",
            fields=[
                ("id", models.BigIntegerField(primary_key=True, serialize=False)),
                ("sealed_at", models.DateTimeField()),
                ("after_event_id", models.BigIntegerField()),
                ("last_event_id", models.BigIntegerField()),
                ("events", models.BigIntegerField()),
                ("total_events", models.BigIntegerField()),
                ("digest", models.BinaryField()),
                ("mac", models.BinaryField(null=True)),
                ("txid", models.BigIntegerField()),
            ],
            options={
                "ordering": ["id"],
            },
        ),
        migrations.AddField(
            model_name="jobevent",
            name="hash",
            field=models.BinaryField(editable=False, null=True),
        ),
        migrations.RunSQL(COLUMNS, DROP_COLUMNS),
        # The functions name the new columns and tables: after them.
        migrations.RunPython(install_functions, restore_functions),
        pgtrigger.migrations.AddTrigger(
            model_name="jobevent",
            trigger=pgtrigger.compiler.Trigger(
                name="chain_event",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    condition='WHEN (NEW."hash" IS NULL)',
                    execute="dbq_chain_event_v1()",
                    func="RETURN NULL;",
                    hash="0366bfbd6d92ceffed4d7c1ca339033259849a68",
                    operation="INSERT",
                    pgid="pgtrigger_chain_event_d15a4",
                    table="django_dbq_jobevent",
                    when="BEFORE",
                ),
            ),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name="retired",
            trigger=pgtrigger.compiler.Trigger(
                name="protect_retired",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    execute="dbq_protect_proof_v1()",
                    func="RETURN NULL;",
                    hash="b4742747488eb1d8c9dc5be1bed068bb8d68bc0b",
                    level="STATEMENT",
                    operation="UPDATE OR DELETE OR TRUNCATE",
                    pgid="pgtrigger_protect_retired_40c35",
                    table="django_dbq_retired",
                    when="BEFORE",
                ),
            ),
        ),
        migrations.AddIndex(
            model_name="seal",
            index=models.Index(fields=["last_event_id"], name="django_dbq_seal_last_event"),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name="seal",
            trigger=pgtrigger.compiler.Trigger(
                name="protect_seals",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    execute="dbq_protect_proof_v1()",
                    func="RETURN NULL;",
                    hash="a368d80b83462078e7f79d208b8d2ce27a814a97",
                    level="STATEMENT",
                    operation="UPDATE OR DELETE OR TRUNCATE",
                    pgid="pgtrigger_protect_seals_cb6b2",
                    table="django_dbq_seal",
                    when="BEFORE",
                ),
            ),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name="retired",
            trigger=pgtrigger.compiler.Trigger(
                name="retired_signed",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    constraint="CONSTRAINT",
                    execute="dbq_require_mac_v1()",
                    func="RETURN NULL;",
                    hash="755fd77811085affce4c8448c2cf80b7ae477225",
                    operation="INSERT",
                    pgid="pgtrigger_retired_signed_ff234",
                    table="django_dbq_retired",
                    timing="DEFERRABLE INITIALLY DEFERRED",
                    when="AFTER",
                ),
            ),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name="seal",
            trigger=pgtrigger.compiler.Trigger(
                name="seal_signed",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    constraint="CONSTRAINT",
                    execute="dbq_require_mac_v1()",
                    func="RETURN NULL;",
                    hash="05adfd33af791bbca7a919b2bc5a19c5aa53b244",
                    operation="INSERT",
                    pgid="pgtrigger_seal_signed_37b7d",
                    table="django_dbq_seal",
                    timing="DEFERRABLE INITIALLY DEFERRED",
                    when="AFTER",
                ),
            ),
        ),
        migrations.RunPython(revoke_trigger_stubs, migrations.RunPython.noop),
    ]
