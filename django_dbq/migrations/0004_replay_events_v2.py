"""Replay, --verify and time travel rebuild through dbq_replay_events_v2
(migrations/sql/0004_replay_events_v2.sql): a full rebuild also sets the projection's
primary key aside for its rounds. dbq_replay_events_v1 stays installed."""

from django.db import migrations

from django_dbq.sqlfiles import read_sql


def install_functions(apps, schema_editor):
    schema_editor.execute(
        read_sql("django_dbq.migrations", "sql/0004_replay_events_v2.sql"), params=None
    )


def drop_functions(apps, schema_editor):
    schema_editor.execute(
        "DROP FUNCTION IF EXISTS dbq_replay_events_v2(timestamptz, uuid[])", params=None
    )


class Migration(migrations.Migration):
    dependencies = [
        ("django_dbq", "0003_apply_events_v2"),
    ]

    operations = [
        migrations.RunPython(install_functions, drop_functions),
    ]
