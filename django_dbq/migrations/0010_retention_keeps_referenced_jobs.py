"""Retention keeps jobs that a user table still references (migrations/sql/0010_ledger.sql).

dbq_delete_old_jobs_v3 replaces dbq_delete_old_jobs_v2: a finished job that a
row of another table references through a foreign key is kept until that row
lets go of it, where v2 failed the whole run at commit. Every role that could
run v2 is granted v3; v2 is dropped (retention is a command, not a process that
runs through a deploy).
"""

from django.db import migrations

from django_dbq.roles import grant_like
from django_dbq.sqlfiles import install_sql

OLD = "dbq_delete_old_jobs_v2(timestamptz)"
NEW = "dbq_delete_old_jobs_v3(timestamptz)"


def _move_grants(schema_editor, old, new):
    with schema_editor.connection.cursor() as cursor:
        grant_like(cursor, old, new)


def forward(apps, schema_editor):
    # install_sql revokes EXECUTE from PUBLIC on every function it creates.
    install_sql(schema_editor, "django_dbq.migrations", "sql/0010_ledger.sql")
    _move_grants(schema_editor, OLD, NEW)
    schema_editor.execute(f"DROP FUNCTION {OLD}", params=None)


def backward(apps, schema_editor):
    install_sql(schema_editor, "django_dbq.migrations", "sql/0007_ledger.sql")
    _move_grants(schema_editor, NEW, OLD)
    schema_editor.execute(f"DROP FUNCTION {NEW}", params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("django_dbq", "0009_audit_reads"),
    ]

    operations = [
        migrations.RunPython(forward, backward),
    ]
