"""The ledger's trigger executes dbq_apply_events_v2 (migrations/sql/0003_apply_events_v2.sql):
statements that only create jobs insert their projection rows without reading the
projection first, and one SECURITY DEFINER trigger function serves each statement.
The v1 functions stay installed; other statements and replay still apply through
dbq_apply_events_v1."""

import pgtrigger.compiler
import pgtrigger.migrations
from django.db import migrations

from django_dbq.sqlfiles import read_sql


def install_functions(apps, schema_editor):
    schema_editor.execute(
        read_sql("django_dbq.migrations", "sql/0003_apply_events_v2.sql"), params=None
    )


def drop_functions(apps, schema_editor):
    schema_editor.execute("DROP FUNCTION IF EXISTS dbq_apply_events_v2()", params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("django_dbq", "0002_ledger"),
    ]

    operations = [
        migrations.RunPython(install_functions, drop_functions),
        pgtrigger.migrations.RemoveTrigger(
            model_name="jobevent",
            name="apply_events",
        ),
        pgtrigger.migrations.AddTrigger(
            model_name="jobevent",
            trigger=pgtrigger.compiler.Trigger(
                name="apply_events",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    execute="dbq_apply_events_v2()",
                    func="RETURN NULL;",
                    hash="9a0b0fa4793554cd44eefda5d6afb9f71c3be01e",
                    level="STATEMENT",
                    operation="INSERT",
                    pgid="pgtrigger_apply_events_0dd6f",
                    referencing="REFERENCING NEW TABLE AS new_events ",
                    table="django_dbq_jobevent",
                    when="AFTER",
                ),
            ),
        ),
    ]
