"""bulk_create's function with each distinct payload said once (migrations/sql/0016_ledger.sql).

- dbq_create_jobs_v3(job_ids uuid[], payloads jsonb, which integer[]): the
  `created` events of dbq_create_jobs_v2, for the roles that may run it; jobs
  of one name, queue and priority share one payload, parsed and checked once.
  dbq_create_jobs_v2 stays for the processes of the previous release while a
  rolling deploy replaces them.
"""

from django.db import migrations

from django_dbq.roles import grant_like
from django_dbq.sqlfiles import install_sql

NEW = "dbq_create_jobs_v3(uuid[], jsonb, integer[])"


def install_function(apps, schema_editor):
    # install_sql revokes EXECUTE from PUBLIC on every function it creates.
    install_sql(schema_editor, "django_dbq.migrations", "sql/0016_ledger.sql")
    with schema_editor.connection.cursor() as cursor:
        grant_like(cursor, "dbq_create_jobs_v2(jsonb)", NEW)


def drop_function(apps, schema_editor):
    schema_editor.execute(f"DROP FUNCTION IF EXISTS {NEW}", params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("django_dbq", "0015_periodic_jobs"),
    ]

    operations = [
        migrations.RunPython(install_function, drop_function),
    ]
