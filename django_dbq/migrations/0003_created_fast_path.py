"""The ledger trigger calls dbq_apply_statement_v2: statements that only create jobs
insert their projection rows without reading the projection first (see
projections/sql/apply_events_v2.sql). The v1 functions stay installed; replay and
the other statements still apply through dbq_apply_events_v1."""

import pgtrigger.compiler
import pgtrigger.migrations
from django.db import migrations

from django_dbq.sqlfiles import read_sql

SIGNATURE = "dbq_apply_statement_v2(django_dbq_jobevent[])"


def install_functions(apps, schema_editor):
    schema_editor.execute(
        read_sql("django_dbq.projections", "sql/apply_events_v2.sql"), params=None
    )


def drop_functions(apps, schema_editor):
    schema_editor.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}", params=None)


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
                    func="\n                PERFORM dbq_apply_statement_v2(ARRAY(SELECT e::django_dbq_jobevent FROM new_events e));\n                RETURN NULL;\n                ",
                    hash="1aab9c43162d219148656d8842689e7a1e583fe8",
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
