"""Replay, --verify and time travel rebuild through dbq_replay_events_v3
(migrations/sql/0005_replay_events_v3.sql): a ledger larger than 128 MB is replayed
in slices of jobs, so the server's memory stays bounded and no round outgrows
PostgreSQL's 1 GB limit for one value. dbq_replay_events_v1 and _v2 stay
installed."""

from django.db import migrations

from django_dbq.sqlfiles import read_sql


def install_functions(apps, schema_editor):
    schema_editor.execute(
        read_sql("django_dbq.migrations", "sql/0005_replay_events_v3.sql"), params=None
    )


def drop_functions(apps, schema_editor):
    schema_editor.execute(
        "DROP FUNCTION IF EXISTS dbq_replay_events_v3(timestamptz, uuid[], bigint)", params=None
    )


class Migration(migrations.Migration):
    dependencies = [
        ("django_dbq", "0004_replay_events_v2"),
    ]

    operations = [
        migrations.RunPython(install_functions, drop_functions),
    ]
