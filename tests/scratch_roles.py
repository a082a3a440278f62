"""Scratch databases and roles named dbq_t_sr_*, as tests/ownedb.py makes them.

A database owned by a non-superuser owner, the app's tables in schema dbq_app,
and LOGIN roles for worker, app, maintenance (granted by `ledger_grants
--execute`) and none; dropped again by drop().
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

from tests.ownedb import SCHEMA, OwnedDatabase, superuser

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("owner", "worker", "app", "maintenance", "none")


def create(tag: str, migrate_to: str | None = None, grants: bool = True) -> OwnedDatabase:
    """A scratch database dbq_t_sr_<tag>_<pid>, migrated (to `migrate_to` of django_dbq, else all)."""
    suffix = f"{tag}_{os.getpid()}"
    db = OwnedDatabase(name=f"dbq_t_sr_{suffix}")
    db.roles = {kind: f"dbq_t_sr_{kind}_{suffix}" for kind in KINDS}
    with superuser() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
        for role in db.roles.values():
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')  # test constants, not input
            conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'CREATE DATABASE "{db.name}" OWNER "{db.roles["owner"]}"')
        conn.execute(f'ALTER DATABASE "{db.name}" SET search_path = {SCHEMA}')
    with psycopg.connect(db.url("owner"), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        conn.execute(f"GRANT USAGE ON SCHEMA {SCHEMA} TO PUBLIC")
    migrated = db.manage("owner", "migrate", "--verbosity", "0")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    if migrate_to:
        back = db.manage("owner", "migrate", "django_dbq", migrate_to, "--verbosity", "0")
        assert back.returncode == 0, back.stderr[-3000:]
    if grants:
        ledger_grants(db)
    return db


def ledger_grants(db: OwnedDatabase) -> None:
    done = db.manage(
        "owner",
        "ledger_grants",
        "--execute",
        "--worker",
        db.roles["worker"],
        "--app",
        db.roles["app"],
        "--maintenance",
        db.roles["maintenance"],
    )
    assert done.returncode == 0, done.stderr[-3000:]


def drop(db: OwnedDatabase) -> None:
    with superuser() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
        for role in db.roles.values():
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def create_job(conn, state="NEW", queue="default", name="testjob", next_task="tests.jobs.task_one"):
    job_id = uuid.uuid4()
    conn.execute(
        "SELECT dbq_create_job_v2(%s, %s)",
        [
            job_id,
            Jsonb(
                {
                    "name": name,
                    "state": state,
                    "queue_name": queue,
                    "next_task": next_task,
                    "workspace": {},
                }
            ),
        ],
    )
    return job_id


def create_jobs(conn, count, state="PROCESSING", queue="flood", name="testjob", chunk=10000):
    for start in range(0, count, chunk):
        events = [
            {
                "job_id": str(uuid.uuid4()),
                "payload": {
                    "name": name,
                    "state": state,
                    "queue_name": queue,
                    "next_task": "tests.jobs.task_one",
                    "workspace": {},
                },
            }
            for _ in range(min(chunk, count - start))
        ]
        conn.execute("SELECT count(*) FROM dbq_create_jobs_v2(%s)", [Jsonb(events)])


def save(conn, job_id, **fields):
    return conn.execute(
        "SELECT * FROM dbq_update_jobs_v2(%s)",
        [Jsonb([{"job_id": str(job_id), "kind": "updated", "payload": fields}])],
    ).fetchall()


def worker_process(db: OwnedDatabase, *args, settings="tests.settings", env=None, **popen):
    """A `manage.py worker` process as the worker role."""
    return subprocess.Popen(
        [sys.executable, "-m", "django", "worker", *args, f"--settings={settings}"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": db.url("worker"), **(env or {})},
        **popen,
    )
