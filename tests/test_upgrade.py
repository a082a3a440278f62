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


def has_right(url, role, table, right):
    return rows(url, f"SELECT has_table_privilege('{role}', '{table}', '{right}')")[0][0]


def test_upgrade__to_0007_takes_back_old_write_grants_and_migrates_back_and_forth(old_database):
    assert manage(old_database, "migrate", "django_dbq", "0006").returncode == 0
    role = f"dbq_t_old_app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(old_database, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}"')  # test constants, not input
        # What ledger_grants of the earlier release gave an app role, and a careless PUBLIC grant.
        conn.execute(f'GRANT SELECT, INSERT ON django_dbq_jobevent TO "{role}"')
        conn.execute(f'GRANT USAGE ON SEQUENCE django_dbq_jobevent_id_seq TO "{role}"')
        conn.execute("GRANT UPDATE ON django_dbq_job TO PUBLIC")
    try:
        forward = manage(old_database, "migrate")
        assert forward.returncode == 0, forward.stderr
        assert not has_right(old_database, role, "django_dbq_jobevent", "INSERT")
        assert has_right(old_database, role, "django_dbq_jobevent", "SELECT")
        assert not has_right(old_database, "public", "django_dbq_job", "UPDATE")
        assert rows(old_database, "SELECT to_regproc('dbq_apply_events_v3') IS NULL") == [(True,)]

        back = manage(old_database, "migrate", "django_dbq", "0006")
        assert back.returncode == 0, back.stderr
        assert rows(old_database, "SELECT to_regproc('dbq_apply_events_v3') IS NULL") == [(False,)]
        again = manage(old_database, "migrate")
        assert again.returncode == 0, again.stderr
        assert manage(old_database, "replay_events", "--verify").returncode == 0
    finally:
        with psycopg.connect(old_database, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


def may_execute(url, role, signature):
    return rows(url, f"SELECT has_function_privilege('{role}', '{signature}', 'EXECUTE')")[0][0]


SUPERSEDED_BY_0008 = (
    "dbq_claim_jobs_v2(text, integer, text, text, text, integer, float8, text[])",
    "dbq_record_and_claim_v1(text, jsonb, text, integer, text, text, integer, float8, text[])",
    "dbq_expire_leases_v2(text, integer)",
    # And by 0010, the retention function (a maintenance role's).
    "dbq_delete_old_jobs_v2(timestamptz)",
)


def test_upgrade__to_0008_and_0010_gives_old_roles_the_functions_that_succeed_theirs(old_database):
    assert manage(old_database, "migrate", "django_dbq", "0007").returncode == 0
    role = f"dbq_t_old_worker_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(old_database, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}"')  # test constants, not input
        # What ledger_grants of the earlier release gave a worker role.
        for signature in SUPERSEDED_BY_0008:
            conn.execute(f'GRANT EXECUTE ON FUNCTION {signature} TO "{role}"')
    new = "dbq_expire_leases_v3(text, integer, jsonb)"
    try:
        forward = manage(old_database, "migrate")
        assert forward.returncode == 0, forward.stderr
        assert may_execute(old_database, role, new)
        assert may_execute(
            old_database,
            role,
            "dbq_claim_jobs_v3(text, integer, text, text, text, integer, float8, text[])",
        )
        assert not may_execute(old_database, "public", new)
        assert may_execute(old_database, role, "dbq_delete_old_jobs_v3(timestamptz)")
        assert rows(old_database, "SELECT to_regproc('dbq_delete_old_jobs_v2') IS NULL") == [
            (True,)
        ]

        back = manage(old_database, "migrate", "django_dbq", "0007")
        assert back.returncode == 0, back.stderr
        assert rows(old_database, f"SELECT to_regprocedure('{new}') IS NULL") == [(True,)]
        assert manage(old_database, "migrate").returncode == 0
    finally:
        with psycopg.connect(old_database, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')
