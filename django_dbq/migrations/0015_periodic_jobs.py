"""Periodic jobs: the schedules' table and the function that enqueues their ticks
(migrations/sql/0015_schedules.sql).

- django_dbq_schedule: a row per schedule of settings.JOBS ever seen by a
  worker, with the last tick enqueued; written only by dbq_enqueue_ticks_v1.
- dbq_enqueue_ticks_v1, for the roles that may claim jobs (the workers), and
  dbq_check_ticks_v1, which it calls (granted to no one).

Every role that may read django_dbq_job is granted SELECT on the new table.
"""

from django.db import migrations, models

from django_dbq.roles import grant_like, grant_select_like
from django_dbq.sqlfiles import install_sql

SQL_FILE = "sql/0015_schedules.sql"
NEW_FUNCTIONS = [
    "dbq_enqueue_ticks_v1(text, jsonb)",
    "dbq_check_ticks_v1(text, jsonb)",
]
CLAIM = "dbq_claim_jobs_v4(text, integer, text, text, text, integer, float8, text[])"


def install_functions(apps, schema_editor):
    # install_sql revokes EXECUTE from PUBLIC on every function it creates.
    install_sql(schema_editor, "django_dbq.migrations", SQL_FILE)
    with schema_editor.connection.cursor() as cursor:
        grant_like(cursor, CLAIM, "dbq_enqueue_ticks_v1(text, jsonb)")
        grant_select_like(cursor, "django_dbq_job", "django_dbq_schedule")


def drop_functions(apps, schema_editor):
    for signature in NEW_FUNCTIONS:
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {signature}", params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("django_dbq", "0014_unique_jobs"),
    ]

    operations = [
        migrations.CreateModel(
            name="Schedule",
            fields=[
                ("name", models.CharField(max_length=100, primary_key=True, serialize=False)),
                ("since", models.DateTimeField()),
                ("last_tick", models.DateTimeField(null=True)),
                ("last_job_id", models.UUIDField(null=True)),
                ("enqueued_at", models.DateTimeField(null=True)),
            ],
            options={
                "ordering": ["name"],
            },
        ),
        # The function names the new table: after it.
        migrations.RunPython(install_functions, drop_functions),
    ]
