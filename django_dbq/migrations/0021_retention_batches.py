"""Retention in batches (migrations/sql/0021_ledger.sql).

- dbq_delete_old_jobs_v5(created_before, after_id, max_jobs): one batch of the
  retention path, the next max_jobs jobs in id order; Job.objects.delete_old()
  calls it batch after batch, each in a transaction of its own. Granted to the
  roles that may run dbq_delete_old_jobs_v4 (the maintenance role).
- dbq_retire_old_jobs_v2 does the work; dbq_retire_old_jobs_v1 (replaced in
  place, same arguments and result) is it without a batch, so
  dbq_delete_old_jobs_v3 and v4, for the processes of the previous release,
  remove all they did in one statement.

The way back drops the new functions and restores dbq_retire_old_jobs_v1.
"""

from django.db import migrations

from django_dbq.roles import grant_like
from django_dbq.sqlfiles import install_sql

NEW = [
    "dbq_delete_old_jobs_v5(timestamptz, uuid, integer)",
    "dbq_retire_old_jobs_v2(timestamptz, boolean, uuid, integer)",
]


def install_functions(apps, schema_editor):
    # install_sql revokes EXECUTE from PUBLIC on every function it creates.
    install_sql(schema_editor, "django_dbq.migrations", "sql/0021_ledger.sql")
    with schema_editor.connection.cursor() as cursor:
        grant_like(cursor, "dbq_delete_old_jobs_v4(timestamptz)", NEW[0])


def restore_functions(apps, schema_editor):
    # dbq_retire_old_jobs_v1 as 0017 left it (with the functions beside it in
    # that file, unchanged since).
    install_sql(schema_editor, "django_dbq.migrations", "sql/0017_ledger.sql")
    for signature in NEW:
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {signature}", params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("django_dbq", "0020_time_ordered_ids"),
    ]

    operations = [
        migrations.RunPython(install_functions, restore_functions),
    ]
