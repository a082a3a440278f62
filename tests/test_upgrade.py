"""A database created by django-db-queue 3.3 upgrades in place with `manage.py migrate`."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from django_dbq.testing import with_database

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = (
    "id, created, modified, name, state, next_task, workspace, queue_name, priority, run_after"
)


def url_for(database):
    return with_database(os.environ["DATABASE_URL"], database)


@pytest.fixture
def old_database():
    """A scratch database holding what django-db-queue 3.3 left behind."""
    name = f"dbq_upgrade_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url_for("postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(url_for(name), autocommit=True) as conn:
            conn.execute((ROOT / "tests/fixtures/django_db_queue_3_3.sql").read_text())
        yield url_for(name)
    finally:
        with psycopg.connect(url_for("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def manage(url, *args):
    return subprocess.run(
        [sys.executable, "-m", "django", *args, "--settings=tests.settings"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )


def rows(url, sql):
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_upgrade__keeps_every_job_and_gives_it_an_imported_history(old_database):
    before = rows(old_database, f"SELECT {COLUMNS} FROM django_dbq_job ORDER BY id")

    migrated = manage(old_database, "migrate")
    assert migrated.returncode == 0, migrated.stderr

    assert rows(old_database, f"SELECT {COLUMNS} FROM django_dbq_job ORDER BY id") == before
    events = rows(
        old_database,
        "SELECT job_id, version, kind, payload->'imported' FROM django_dbq_jobevent ORDER BY job_id",
    )
    assert events == [(row[0], 1, "created", True) for row in before]
    assert rows(old_database, "SELECT DISTINCT version FROM django_dbq_job") == [(1,)]

    verified = manage(old_database, "replay_events", "--verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("ok: replaying 6 events gives the live projection (6 jobs)")


def test_upgrade__the_upgraded_queue_keeps_working(old_database):
    assert manage(old_database, "migrate").returncode == 0

    script = (
        "from django_dbq.models import Job;"
        "job = Job.objects.get(pk='00000000-0000-4000-8000-000000000005');"
        "job.state = 'READY'; job.save();"
        "Job.objects.create(name='testjob');"
        "print(sorted(Job.get_queue_depths().items()))"
    )
    shell = manage(old_database, "shell", "-c", script)
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.strip().endswith("[('default', 3), ('other', 1)]")

    history = manage(old_database, "job_history", "00000000-0000-4000-8000-000000000005")
    assert "created (imported)" in history.stdout and "updated" in history.stdout
    assert manage(old_database, "replay_events", "--verify").returncode == 0
