"""Replay in slices of job id ranges (migrations/sql/0022_*.sql).

dbq_replay_events_v5 and its audit variants (dbq_replay_events_scratch_v5,
dbq_replay_copy_scratch_v5), replaced in place with the same arguments and
results: a ledger larger than a slice is split into ranges of job ids, bounded
from a sample of the ledger, each read through the (job_id, version) index
instead of the whole ledger per slice; a NOTICE after each slice tells how far
the rebuild is. The way back restores them as 0011 and 0017 left them.
"""

from django.db import migrations

from django_dbq.sqlfiles import install_sql


def install_functions(apps, schema_editor):
    for name in ("sql/0022_replay.sql", "sql/0022_audit_reads.sql"):
        install_sql(schema_editor, "django_dbq.migrations", name)


def restore_functions(apps, schema_editor):
    for name in ("sql/0011_replay.sql", "sql/0017_audit_reads.sql"):
        install_sql(schema_editor, "django_dbq.migrations", name)


class Migration(migrations.Migration):
    dependencies = [
        ("django_dbq", "0021_retention_batches"),
    ]

    operations = [
        migrations.RunPython(install_functions, restore_functions),
    ]
