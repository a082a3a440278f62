"""Unique jobs: Job.unique_key and the index that holds one job per key (migrations/sql/0014_*.sql).

- django_dbq_job.unique_key, and django_dbq_job_unique_key, a partial unique
  index over the jobs with a key that wait or run (NEW, READY, PROCESSING,
  STOPPING): a second job with a key that one of them holds cannot be written,
  whoever writes it; a finished job frees its key.
- dbq_job_row_v1 (the projection row of a `created` event) fills the new
  column from the payload's unique_key. It is replaced in place, in the same
  transaction as the column is added: it returns the table's row, so the old
  definition cannot outlive the column, and no process calls it but the
  ledger's trigger and replay, through the fold (0014_apply.sql holds it
  alone; the rest of apply.sql is as 0011 installed it).
- dbq_create_unique_jobs_v1 creates jobs of which some carry a key, leaving
  out the duplicates, for the roles that may run dbq_create_jobs_v2;
  dbq_replace_unique_jobs_v1 also gives the waiting job a duplicate names the
  duplicate's fields (a save), for the roles that may run dbq_update_jobs_v2
  (0014_unique.sql). The other create functions still refuse a unique_key.

The way back drops the column and the index (the ledger keeps the keys, which
the previous fold ignores); forward again rebuilds the rows of the jobs created
with a key.
"""

from django.db import migrations, models
from django.db.models import Q

from django_dbq.exceptions import MigrationHistoryError
from django_dbq.roles import grant_like
from django_dbq.sqlfiles import install_sql

NEW_FUNCTIONS = [
    "dbq_is_unique_key_v1(jsonb)",
    "dbq_check_unique_created_v1(uuid, jsonb)",
    "dbq_enqueue_unique_v1(jsonb, boolean)",
    "dbq_create_unique_jobs_v1(jsonb)",
    "dbq_replace_unique_jobs_v1(jsonb)",
]


# Jobs created with a key before a way back to 0013 and forward again: the
# column came back empty, their rows are rebuilt from the ledger.
KEYED = """
SELECT array_agg(job_id) FROM django_dbq_jobevent
WHERE kind = 'created' AND payload ? 'unique_key'
"""


def install_functions(apps, schema_editor):
    for name in ("0014_apply.sql", "0014_unique.sql"):
        install_sql(schema_editor, "django_dbq.migrations", f"sql/{name}")
    with schema_editor.connection.cursor() as cursor:
        grant_like(cursor, "dbq_create_jobs_v2(jsonb)", "dbq_create_unique_jobs_v1(jsonb)")
        grant_like(cursor, "dbq_update_jobs_v2(jsonb)", "dbq_replace_unique_jobs_v1(jsonb)")
        cursor.execute(KEYED)
        (keyed,) = cursor.fetchone()
        if keyed:
            # Before the index: the rounds of a replay hold every keyed job at
            # once, those that finished long ago included.
            cursor.execute("SELECT dbq_replay_events_v5(NULL, %s::uuid[])", [keyed])
            cursor.execute(SHARED_KEYS)
            shared = cursor.fetchall()
            if shared:
                listed = "; ".join(f"{key!r}: {', '.join(map(str, ids))}" for key, ids in shared)
                raise MigrationHistoryError(
                    "django_dbq: jobs that wait or run share a unique key (made while the "
                    f"database was at 0013, which does not enforce keys): {listed}. Cancel "
                    "all but one job of each key (job.cancel()), then migrate again."
                )


SHARED_KEYS = """
SELECT unique_key, array_agg(id ORDER BY created) FROM django_dbq_job
WHERE unique_key IS NOT NULL AND state IN ('NEW', 'READY', 'PROCESSING', 'STOPPING')
GROUP BY unique_key HAVING count(*) > 1 ORDER BY 1 LIMIT 20
"""


def drop_new_functions(apps, schema_editor):
    for signature in reversed(NEW_FUNCTIONS):
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {signature}", params=None)


def restore_job_row(apps, schema_editor):
    # On the way back, once the column is gone: the row without it.
    install_sql(schema_editor, "django_dbq.migrations", "sql/0011_apply.sql")


class Migration(migrations.Migration):
    dependencies = [
        ("django_dbq", "0013_pause_queues"),
    ]

    operations = [
        migrations.RunPython(migrations.RunPython.noop, restore_job_row),
        migrations.AddField(
            model_name="job",
            name="unique_key",
            field=models.CharField(blank=True, editable=False, max_length=200, null=True),
        ),
        migrations.RunPython(install_functions, drop_new_functions),
        migrations.AddConstraint(
            model_name="job",
            constraint=models.UniqueConstraint(
                fields=["unique_key"],
                condition=Q(unique_key__isnull=False)
                & Q(state__in=["NEW", "READY", "PROCESSING", "STOPPING"]),
                name="django_dbq_job_unique_key",
            ),
        ),
    ]
