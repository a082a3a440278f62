"""A database created by django-db-queue (1.x to 3.3) upgrades in place with `manage.py migrate`."""

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from django_dbq.testing import with_database

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = (
    "id, created, modified, name, state, next_task, workspace, queue_name, priority, run_after"
)


def url_for(database):
    return with_database(os.environ["DATABASE_URL"], database)


@pytest.fixture
def scratch_database():
    """An empty database of its own, dropped afterwards."""
    name = f"dbq_upgrade_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url_for("postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url_for(name)
    finally:
        with psycopg.connect(url_for("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def old_database(scratch_database):
    """A scratch database holding what django-db-queue 3.3 left behind."""
    run_sql(scratch_database, (ROOT / "tests/fixtures/django_db_queue_3_3.sql").read_text())
    return scratch_database


def manage(url, *args, settings="tests.settings", **env):
    return subprocess.run(
        [sys.executable, "-m", "django", *args, f"--settings={settings}"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def rows(url, sql, params=None):
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def run_sql(url, sql, params=None):
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql, params)


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
    assert manage(old_database, "migrate", "django_dbq", "0006_apply_events_v3").returncode == 0
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

        back = manage(old_database, "migrate", "django_dbq", "0006_apply_events_v3")
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


# django-db-queue releases: the states their Job model had, and the last migration
# each ships (their migrations are vendored verbatim in tests/fixtures/releases).
STATES_1X_2X = ("NEW", "READY", "PROCESSING", "FAILED", "COMPLETE")
STATES_3X = ("NEW", "READY", "PROCESSING", "STOPPING", "FAILED", "COMPLETE")
RELEASES = {
    "1.3.1": (STATES_1X_2X, "0003_auto_20180713_1000"),
    "2.1.1": (STATES_1X_2X, "0005_job_run_after"),
    "3.0.0": (STATES_3X, "0006_alter_job_state"),
    "3.3.0": (STATES_3X, "0006_alter_job_state"),
}
WORKSPACES = [
    {"one": True, "nested": {"a": [1, 2]}},
    {"user_id": 42, "name": "café ☕", "ratio": 1.5},
    {},
    # jsonfield's encoder (1.x) stored datetimes and decimals as strings.
    {"when": "2018-07-13T10:00:00Z", "amount": "12.50", "list": [None, "x", -3]},
]
EPOCH = datetime(2019, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
TWO_TASKS = uuid.UUID("00000000-0000-4000-8000-0000000000aa")
ORIGINALS = [
    "0001_initial",
    "0002_auto_20151016_1027",
    "0003_auto_20180713_1000",
    "0004_auto_20210818_0247",
    "0005_job_run_after",
    "0006_alter_job_state",
]
SQUASH = "0001_squashed_0006_alter_job_state"
FAKE_SQUASH = f"manage.py migrate django_dbq {SQUASH} --fake"


def build_release(url, release):
    """A database at a django-db-queue release's schema, made by that release's migrations."""
    made = manage(
        url,
        "migrate",
        "django_dbq",
        settings="tests.fixtures.releases.settings",
        DBQ_TEST_RELEASE=release,
    )
    assert made.returncode == 0, made.stderr
    recorded = rows(url, "SELECT name FROM django_migrations WHERE app = 'django_dbq' ORDER BY id")
    assert recorded[-1] == (RELEASES[release][1],)


def release_jobs(release):
    """Jobs in every state the release had, with the fields its table had."""
    states, _ = RELEASES[release]
    jobs = [
        {
            "id": uuid.UUID(f"00000000-0000-4000-8000-{i + 1:012d}"),
            "created": EPOCH + timedelta(seconds=i),
            "modified": EPOCH + timedelta(hours=1, seconds=i),
            "name": "testjob",
            "state": state,
            "next_task": "" if state == "COMPLETE" else "tests.jobs.task_one",
            "workspace": WORKSPACES[i % len(WORKSPACES)],
            "queue_name": "default" if i % 2 == 0 else "other",
            "priority": i - 2,
            "run_after": None,
        }
        for i, state in enumerate(states)
    ]
    jobs.append({**jobs[-2], "id": uuid.UUID(int=7), "workspace": None, "state": "FAILED"})
    jobs.append(
        {
            **jobs[0],
            "id": TWO_TASKS,
            "name": "twotasks",
            "state": "READY",
            "next_task": "tests.jobs.task_two",
            "workspace": {"one": True},
            "priority": 3,
        }
    )
    if release != "1.3.1":  # 0005_job_run_after
        jobs[1]["run_after"] = EPOCH - timedelta(days=1)
        jobs[-2]["run_after"] = datetime(2030, 6, 1, 12, tzinfo=UTC)
    return jobs


def insert_jobs(url, release, jobs):
    """Store the jobs as the release did: 1.x's workspace is jsonfield's JSON text."""
    columns = [c for c in COLUMNS.split(", ") if release != "1.3.1" or c != "run_after"]
    placeholders = ", ".join(["%s"] * len(columns))
    with psycopg.connect(url, autocommit=True) as conn:
        for job in jobs:
            values = {**job, "workspace": stored_workspace(release, job["workspace"])}
            conn.execute(
                f"INSERT INTO django_dbq_job ({', '.join(columns)}) VALUES ({placeholders})",
                [values[c] for c in columns],  # column names are test constants
            )


def stored_workspace(release, workspace):
    if workspace is None:
        return None
    if release == "1.3.1":  # jsonfield 2.0.2: json.dumps with compact separators
        return json.dumps(workspace, separators=(",", ":"))
    return Jsonb(workspace)


def as_row(job):
    return tuple(job[c] for c in COLUMNS.split(", "))


def old_release_database(url, release):
    """A database made by a release's migrations, holding its jobs; returns the jobs."""
    build_release(url, release)
    jobs = release_jobs(release)
    insert_jobs(url, release, jobs)
    return jobs


def assert_upgraded(url, jobs):
    """migrate works, every job is kept with one imported `created` event, replay agrees."""
    migrated = manage(url, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    expected = sorted(as_row(job) for job in jobs)
    assert rows(url, f"SELECT {COLUMNS} FROM django_dbq_job ORDER BY id") == expected
    events = rows(
        url,
        "SELECT job_id, version, kind, payload->'imported' FROM django_dbq_jobevent ORDER BY job_id",
    )
    assert events == [(row[0], 1, "created", True) for row in expected]
    verified = manage(url, "replay_events", "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith(f"ok: replaying {len(jobs)} events")


@pytest.mark.parametrize("release", RELEASES)
def test_upgrade__from_each_release_keeps_every_job_and_the_queue_runs(scratch_database, release):
    jobs = old_release_database(scratch_database, release)

    assert_upgraded(scratch_database, jobs)
    created = manage(
        scratch_database,
        "shell",
        "-c",
        "from django_dbq.models import Job; print(Job.objects.create(name='testjob').pk)",
    )
    assert created.returncode == 0, created.stderr
    ran = manage(scratch_database, "worker", "--burst")
    assert ran.returncode == 0, ran.stderr
    new = created.stdout.split()[-1]
    finished = "SELECT state, workspace FROM django_dbq_job WHERE id = %s"
    assert rows(scratch_database, finished, [new]) == [("COMPLETE", {"one": True})]
    assert rows(scratch_database, finished, [TWO_TASKS]) == [
        ("COMPLETE", {"one": True, "two": True})
    ]
    assert manage(scratch_database, "replay_events", "--verify").returncode == 0


def test_upgrade__from_1x_turns_jsonfield_text_into_jsonb(scratch_database):
    old_release_database(scratch_database, "1.3.1")
    column = "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'django_dbq_job'::regclass AND attname = 'workspace'"
    assert rows(scratch_database, column) == [("text",)]

    assert manage(scratch_database, "migrate").returncode == 0
    assert rows(scratch_database, column) == [("jsonb",)]
    assert rows(
        scratch_database,
        "SELECT workspace->>'name', workspace IS NULL FROM django_dbq_job WHERE id IN (%s, %s) ORDER BY id",
        [uuid.UUID(int=7), uuid.UUID("00000000-0000-4000-8000-000000000002")],
    ) == [(None, True), ("café ☕", False)]


# A 3.3 table of this many more jobs is imported in three INSERTs of up to 10,000.
MANY_JOBS = """
INSERT INTO django_dbq_job
SELECT md5(i::text)::uuid, timestamptz '2024-01-01' + (i %% 7) * interval '1 second', now(),
       'testjob', 'NEW', 'tests.jobs.task_one', jsonb_build_object('i', i), 'default', 0, NULL
FROM generate_series(1, %s) AS i
"""


def test_upgrade__imports_jobs_in_batches_oldest_first(old_database):
    run_sql(old_database, MANY_JOBS, [20_000])

    # Counts the calls of PL/pgSQL functions: the ledger trigger's, once per INSERT.
    migrated = manage(
        old_database, "migrate", "django_dbq", "0002_ledger", PGOPTIONS="-c track_functions=pl"
    )
    assert migrated.returncode == 0, migrated.stderr

    calls = "SELECT calls FROM pg_stat_user_functions WHERE funcname = 'dbq_apply_statement_v1'"
    deadline = time.monotonic() + 10
    while not rows(old_database, calls) and time.monotonic() < deadline:
        time.sleep(0.1)  # the backend reports its counts as it exits
    assert rows(old_database, calls) == [(3,)]
    in_order = """
        SELECT array_agg(e.job_id ORDER BY e.id) = array_agg(j.id ORDER BY j.created, j.id)
        FROM django_dbq_jobevent e JOIN django_dbq_job j ON j.id = e.job_id
    """
    assert rows(old_database, in_order) == [(True,)]
    assert rows(old_database, "SELECT count(*) FROM django_dbq_jobevent") == [(20_006,)]


FIRST = {
    name: "text"
    for name in ("id", "created", "modified", "name", "state", "next_task", "queue_name")
}


@pytest.mark.parametrize(
    ("columns", "ledger", "last"),
    [
        ({}, False, None),
        ({**FIRST, "workspace": "text"}, False, "0002_auto_20151016_1027"),
        ({**FIRST, "workspace": "text", "priority": "smallint"}, False, "0003_auto_20180713_1000"),
        ({**FIRST, "workspace": "jsonb", "priority": "smallint"}, False, "0004_auto_20210818_0247"),
        (
            {**FIRST, "workspace": "jsonb", "priority": "smallint", "run_after": "timestamptz"},
            True,
            "0006_alter_job_state",
        ),
    ],
)
def test_upgrade__the_job_tables_columns_show_which_old_migrations_ran(columns, ledger, last):
    from django_dbq.upgrade import migrations_shown

    shown = migrations_shown(columns, ledger)

    assert shown == tuple(ORIGINALS[: ORIGINALS.index(last) + 1] if last else [])


def test_upgrade__a_table_no_release_made_shows_no_migrations():
    from django_dbq.upgrade import migrations_shown

    assert (
        migrations_shown({**FIRST, "workspace": "text", "run_after": "timestamptz"}, False) is None
    )
    assert migrations_shown({**FIRST, "workspace": "text"}, True) is None


def fixture_jobs(url):
    return [
        dict(zip(COLUMNS.split(", "), row, strict=True))
        for row in rows(url, f"SELECT {COLUMNS} FROM django_dbq_job")
    ]


def test_upgrade__a_gap_in_the_records_stops_migrate_with_the_record_to_add(old_database):
    jobs = fixture_jobs(old_database)
    run_sql(
        old_database,
        "DELETE FROM django_migrations WHERE app = 'django_dbq' AND name = '0003_auto_20180713_1000'",
    )

    stopped = manage(old_database, "migrate")
    assert stopped.returncode == 1
    assert "django_dbq.E013" in stopped.stderr
    assert "records django_dbq.0004_auto_20210818_0247 but not 0003_auto_20180713_1000" in (
        stopped.stderr
    )
    fix = (
        "INSERT INTO django_migrations (app, name, applied) VALUES "
        "('django_dbq', '0003_auto_20180713_1000', now());"
    )
    assert fix in stopped.stderr
    assert rows(old_database, "SELECT to_regclass('django_dbq_jobevent')") == [(None,)]

    run_sql(old_database, fix)
    assert_upgraded(old_database, jobs)


def test_upgrade__ledger_recorded_without_the_last_old_ones_stops_migrate_with_the_records_to_add(
    old_database,
):
    assert manage(old_database, "migrate").returncode == 0
    run_sql(
        old_database,
        "DELETE FROM django_migrations WHERE app = 'django_dbq' AND name IN "
        "('0005_job_run_after', '0006_alter_job_state')",
    )

    stopped = manage(old_database, "migrate")
    assert stopped.returncode == 1
    assert "records django_dbq.0002_ledger but not 0006_alter_job_state" in stopped.stderr
    fix = (
        "INSERT INTO django_migrations (app, name, applied) VALUES "
        "('django_dbq', '0005_job_run_after', now()), ('django_dbq', '0006_alter_job_state', now());"
    )
    assert fix in stopped.stderr

    run_sql(old_database, fix)
    again = manage(old_database, "migrate")
    assert again.returncode == 0, again.stderr
    assert "No migrations to apply" in again.stdout
    assert manage(old_database, "replay_events", "--verify").returncode == 0


def test_upgrade__a_table_without_records_stops_migrate_which_says_to_fake_the_squash(
    old_database,
):
    jobs = fixture_jobs(old_database)
    run_sql(old_database, "DELETE FROM django_migrations WHERE app = 'django_dbq'")

    stopped = manage(old_database, "migrate")
    assert stopped.returncode == 1
    assert "django_dbq_job exists, but django_migrations records none" in stopped.stderr
    assert FAKE_SQUASH in stopped.stderr and "Traceback" not in stopped.stderr

    faked = manage(old_database, "migrate", "django_dbq", SQUASH, "--fake")
    assert faked.returncode == 0, faked.stderr
    assert_upgraded(old_database, jobs)


def test_upgrade__a_1x_table_without_records_stops_migrate_with_the_records_to_add(
    scratch_database,
):
    jobs = old_release_database(scratch_database, "1.3.1")
    run_sql(scratch_database, "DELETE FROM django_migrations WHERE app = 'django_dbq'")

    stopped = manage(scratch_database, "migrate")
    assert stopped.returncode == 1
    fix = (
        "INSERT INTO django_migrations (app, name, applied) VALUES "
        "('django_dbq', '0001_initial', now()), ('django_dbq', '0002_auto_20151016_1027', now()), "
        "('django_dbq', '0003_auto_20180713_1000', now());"
    )
    assert fix in stopped.stderr and f"Do not fake {SQUASH}" in stopped.stderr

    run_sql(scratch_database, fix)
    assert_upgraded(scratch_database, jobs)


def test_upgrade__a_1x_table_faked_to_3x_stops_0002_ledger_with_the_records_to_drop(
    scratch_database,
):
    jobs = old_release_database(scratch_database, "1.3.1")
    # What a user told that django_dbq_job "already exists" may have done.
    run_sql(scratch_database, "DELETE FROM django_migrations WHERE app = 'django_dbq'")
    assert manage(scratch_database, "migrate", "django_dbq", SQUASH, "--fake").returncode == 0

    stopped = manage(scratch_database, "migrate")
    assert stopped.returncode == 1
    assert "so 0002_ledger cannot convert it" in stopped.stderr
    fix = (
        "DELETE FROM django_migrations WHERE app = 'django_dbq' AND name IN "
        "('0004_auto_20210818_0247', '0005_job_run_after', '0006_alter_job_state');"
    )
    assert fix in stopped.stderr

    run_sql(scratch_database, fix)
    assert_upgraded(scratch_database, jobs)


def test_upgrade__old_records_pruned_stop_migrate_with_the_records_to_add(old_database):
    assert manage(old_database, "migrate").returncode == 0
    # What `migrate --prune` did under a release that did not ship the six originals:
    # the squash's record stays, which Django does not count without the six.
    run_sql(
        old_database,
        "DELETE FROM django_migrations WHERE app = 'django_dbq' AND name = ANY(%s)",
        [ORIGINALS],
    )

    stopped = manage(old_database, "migrate")
    assert stopped.returncode == 1
    assert "django_dbq.E013" in stopped.stderr and "Traceback" not in stopped.stderr
    rows_to_add = ", ".join(f"('django_dbq', '{name}', now())" for name in ORIGINALS)
    fix = f"INSERT INTO django_migrations (app, name, applied) VALUES {rows_to_add};"
    assert fix in stopped.stderr

    run_sql(old_database, fix)
    again = manage(old_database, "migrate")
    assert again.returncode == 0, again.stderr
    assert "No migrations to apply" in again.stdout
    assert manage(old_database, "replay_events", "--verify").returncode == 0


def test_upgrade__a_ledger_whose_records_were_lost_stops_0002_ledger_which_says_to_fake(
    old_database,
):
    assert manage(old_database, "migrate").returncode == 0
    run_sql(
        old_database,
        "DELETE FROM django_migrations WHERE app = 'django_dbq' AND name <> ALL(%s)",
        [[*ORIGINALS, SQUASH]],
    )

    stopped = manage(old_database, "migrate")
    assert stopped.returncode == 1
    assert "django_dbq_jobevent exists, but django_migrations does not record 0002_ledger" in (
        stopped.stderr
    )

    faked = manage(old_database, "migrate", "django_dbq", "--fake")
    assert faked.returncode == 0, faked.stderr
    assert rows(old_database, "SELECT count(*) FROM django_dbq_jobevent") == [(6,)]
    assert manage(old_database, "replay_events", "--verify").returncode == 0
