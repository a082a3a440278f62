"""The ledger's trigger executes dbq_apply_events_v3 and the projection's guard
executes dbq_protect_projection_v1 (migrations/sql/0006_apply_events_v3.sql): the
wake-up NOTIFY is sent without a helper function, and the guard reads
pgtrigger.ignore without pgtrigger's subtransaction. dbq_apply_events_v2 stays
installed."""

import pgtrigger.compiler
import pgtrigger.migrations
from django.db import migrations

from django_dbq.sqlfiles import read_sql


def install_functions(apps, schema_editor):
    schema_editor.execute(
        read_sql("django_dbq.migrations", "sql/0006_apply_events_v3.sql"), params=None
    )


def drop_functions(apps, schema_editor):
    schema_editor.execute("DROP FUNCTION IF EXISTS dbq_apply_events_v3()", params=None)
    schema_editor.execute("DROP FUNCTION IF EXISTS dbq_protect_projection_v1()", params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("django_dbq", "0005_replay_events_v3"),
    ]

    operations = [
        migrations.RunPython(install_functions, drop_functions),
        pgtrigger.migrations.RemoveTrigger(
            model_name="job",
            name="protect_projection",
        ),
        pgtrigger.migrations.RemoveTrigger(
            model_name="jobevent",
            name="apply_events",
        ),
        pgtrigger.migrations.AddTrigger(
            model_name="job",
            trigger=pgtrigger.compiler.Trigger(
                name="protect_projection",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    execute="dbq_protect_projection_v1()",
                    func="RETURN NULL;",
                    hash="ebf612642a162ef9b4df818af5cdf5288f3ffaaa",
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
                name="apply_events",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    execute="dbq_apply_events_v3()",
                    func="RETURN NULL;",
                    hash="6467bc62337cabe418e286b83b38bfa14e7b8263",
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
