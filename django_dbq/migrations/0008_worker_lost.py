"""A lost worker's job counts an attempt (the functions of migrations/sql/0008_worker.sql).

- dbq_claim_jobs_v3 records each claimed job's place in its batch.
- dbq_record_and_claim_v2 claims with it.
- dbq_expire_leases_v3 retries (or, past its job's rule, fails) with a WorkerLost
  error the job a lost worker was running; the rest of its batch goes back
  without an attempt counted.

Every role that may execute a superseded function is granted its successor, so
that workers keep their rights without a new ledger_grants. The superseded
functions stay for workers of the previous release during a rolling deploy.
"""

from django.db import migrations

from django_dbq.roles import grant_like
from django_dbq.sqlfiles import install_sql

SUCCESSORS = {
    "dbq_claim_jobs_v2(text, integer, text, text, text, integer, float8, text[])": (
        "dbq_claim_jobs_v3(text, integer, text, text, text, integer, float8, text[])"
    ),
    "dbq_record_and_claim_v1(text, jsonb, text, integer, text, text, integer, float8, text[])": (
        "dbq_record_and_claim_v2(text, jsonb, text, integer, text, text, integer, float8, text[])"
    ),
    "dbq_expire_leases_v2(text, integer)": "dbq_expire_leases_v3(text, integer, jsonb)",
}


def install_functions(apps, schema_editor):
    # install_sql revokes EXECUTE from PUBLIC on every function it creates.
    install_sql(schema_editor, "django_dbq.migrations", "sql/0008_worker.sql")


def grant_successors(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        for old, new in SUCCESSORS.items():
            grant_like(cursor, old, new)


def drop_successors(apps, schema_editor):
    for new in SUCCESSORS.values():
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {new}", params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("django_dbq", "0007_ledger_security"),
    ]

    operations = [
        migrations.RunPython(install_functions, drop_successors),
        migrations.RunPython(grant_successors, migrations.RunPython.noop),
    ]
