"""A hot set that stays small: the claim reads only jobs it may take (sql/0019_worker.sql).

- django_dbq_job_ready replaces django_dbq_job_claimable: the waiting jobs of
  a queue, those scheduled for later (run_after after created) apart, the
  others in claim order. django_dbq_job_scheduled: the jobs scheduled for
  later, by run_after. A claim reads the due ones of the latter and the first
  of the former; the idle worker's "seconds until the next due job" reads one
  entry. Behind a million jobs scheduled for tomorrow, neither reads them.
- django_dbq_job_failed: the FAILED and CANCELLED jobs of each queue, which
  dbq_stats counts exactly without reading the completed ones.
- dbq_claim_jobs_v4 reads both (replaced in place: same arguments, same
  results).
- Storage settings of the two tables: the projection keeps free space in its
  pages for the new row version of each transition (fillfactor 80), and both
  are vacuumed and analysed after a small share of their rows changed, so that
  dead row versions of the projection and the visibility map of the ledger
  keep up with a busy queue. ALTER TABLE ... SET (...) changes any of them.

The indexes are built with CREATE INDEX CONCURRENTLY (the queue goes on
meanwhile); an invalid one left by a build that failed is built again. The way
back restores the claim index and the previous claim function.
"""

from django.db import migrations, models
from django.db.models import Q

from django_dbq.sqlfiles import install_sql

READY = models.Index(
    "queue_name",
    models.ExpressionWrapper(
        Q(run_after__isnull=False) & Q(run_after__gt=models.F("created")),
        output_field=models.BooleanField(),
    ),
    models.F("priority").desc(),
    "created",
    name="django_dbq_job_ready",
    condition=Q(state__in=["NEW", "READY"]),
)
SCHEDULED = models.Index(
    fields=["queue_name", "run_after"],
    name="django_dbq_job_scheduled",
    condition=Q(state__in=["NEW", "READY"]) & Q(run_after__gt=models.F("created")),
)
FAILED = models.Index(
    fields=["queue_name"],
    name="django_dbq_job_failed",
    condition=Q(state__in=["FAILED", "CANCELLED"]),
)
CLAIMABLE = models.Index(
    "queue_name",
    models.F("priority").desc(),
    "created",
    name="django_dbq_job_claimable",
    condition=Q(state__in=["NEW", "READY"]),
)

JOB_STORAGE = {
    "fillfactor": "80",
    "autovacuum_vacuum_scale_factor": "0.02",
    "autovacuum_vacuum_threshold": "1000",
    "autovacuum_vacuum_insert_scale_factor": "0.02",
    "autovacuum_analyze_scale_factor": "0.02",
    "autovacuum_vacuum_cost_delay": "1",
}
EVENT_STORAGE = {
    "autovacuum_vacuum_insert_scale_factor": "0.02",
    "autovacuum_analyze_scale_factor": "0.02",
    "autovacuum_vacuum_cost_delay": "1",
}


def _storage(table: str, settings: dict[str, str]) -> tuple[str, str]:
    values = ", ".join(f"{key} = {value}" for key, value in settings.items())
    return (
        f"ALTER TABLE {table} SET ({values})",
        f"ALTER TABLE {table} RESET ({', '.join(settings)})",
    )


def _build(apps, schema_editor, index: models.Index) -> None:
    """Build an index concurrently, or again where a failed build left it invalid."""
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indisvalid FROM pg_catalog.pg_index i"
            " JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid"
            " WHERE c.relname = %s AND pg_catalog.pg_table_is_visible(c.oid)",
            [index.name],
        )
        found = cursor.fetchone()
    if found and found[0]:
        return
    if found:
        schema_editor.execute(f"DROP INDEX CONCURRENTLY {index.name}", params=None)
    job = apps.get_model("django_dbq", "Job")
    schema_editor.execute(index.create_sql(job, schema_editor, concurrently=True), params=None)


def _drop(schema_editor, index: models.Index) -> None:
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index.name}", params=None)


def build_indexes(apps, schema_editor):
    for index in (READY, SCHEDULED, FAILED):
        _build(apps, schema_editor, index)


def drop_indexes(apps, schema_editor):
    for index in (READY, SCHEDULED, FAILED):
        _drop(schema_editor, index)


def install_claim(apps, schema_editor):
    install_sql(schema_editor, "django_dbq.migrations", "sql/0019_worker.sql")


def restore_claim(apps, schema_editor):
    # The claim as 0017 left it (0017_worker.sql: it and the functions beside it,
    # unchanged since).
    install_sql(schema_editor, "django_dbq.migrations", "sql/0017_worker.sql")


def drop_claimable(apps, schema_editor):
    _drop(schema_editor, CLAIMABLE)


def build_claimable(apps, schema_editor):
    _build(apps, schema_editor, CLAIMABLE)


class Migration(migrations.Migration):
    # CREATE and DROP INDEX CONCURRENTLY run outside a transaction.
    atomic = False

    dependencies = [
        ("django_dbq", "0018_hash_old_events"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunPython(build_indexes, drop_indexes),
                migrations.RunPython(install_claim, restore_claim),
                migrations.RunPython(drop_claimable, build_claimable),
            ],
            state_operations=[
                migrations.RemoveIndex(model_name="job", name="django_dbq_job_claimable"),
                migrations.AddIndex(model_name="job", index=READY),
                migrations.AddIndex(model_name="job", index=SCHEDULED),
                migrations.AddIndex(model_name="job", index=FAILED),
            ],
        ),
        migrations.RunSQL(*_storage("django_dbq_job", JOB_STORAGE)),
        migrations.RunSQL(*_storage("django_dbq_jobevent", EVENT_STORAGE)),
    ]
