"""Upgrade in place: `manage.py migrate` of a django-db-queue 3.3 table of N jobs.

    python benchmarks/upgrade.py --jobs 1000000

Builds a database (`dbq_bench_upgrade`) at django-db-queue 3.3's schema
(tests/fixtures/django_db_queue_3_3.sql) holding N more jobs in all six states, made
by generate_series, then times `manage.py migrate` in a child process, which
imports every job into the ledger (migration 0002_ledger). While it runs, the
PostgreSQL backend's /proc/<pid>/status is read every 0.1 s: its peak resident
memory (VmHWM, which also counts the shared buffers it touched) and its peak
private memory (the largest RssAnon seen); the child's peak resident memory is its
ru_maxrss. `--source DIR` runs the migrations of another checkout (to compare with
an earlier commit). The database is dropped at the end unless `--keep`. Reading
the backend's /proc needs the server on this machine and the rights to read its
processes (root, or the server's user).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from django_dbq.testing import database_url, with_database  # noqa: E402

DATABASE = "dbq_bench_upgrade"

# N jobs as 3.3 leaves them: every state, a small workspace, some priorities and run_afters.
FILL_JOBS = """
INSERT INTO django_dbq_job
SELECT md5(i::text)::uuid,
       timestamptz '2024-01-01' + i * interval '1 millisecond',
       timestamptz '2024-01-02' + i * interval '1 millisecond',
       'testjob',
       (ARRAY['NEW', 'READY', 'PROCESSING', 'STOPPING', 'FAILED', 'COMPLETE'])[1 + i %% 6],
       'tests.jobs.task_one',
       jsonb_build_object('user_id', i, 'items', jsonb_build_array(1, 2, 3), 'note', 'imported'),
       'q' || (i %% 4),
       (i %% 3) - 1,
       CASE WHEN i %% 5 = 0 THEN timestamptz '2030-01-01' END
FROM generate_series(1, %s) AS i
"""

BACKENDS = """
SELECT pid, backend_type FROM pg_stat_activity
WHERE datname = %s AND pid <> pg_backend_pid()
"""


def build(server: str, jobs: int) -> None:
    """A fresh database at django-db-queue 3.3's schema with `jobs` more jobs."""
    name = sql.Identifier(DATABASE)
    with psycopg.connect(with_database(server, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    with psycopg.connect(with_database(server, DATABASE), autocommit=True) as conn:
        conn.execute((ROOT / "tests/fixtures/django_db_queue_3_3.sql").read_text())
        conn.execute(FILL_JOBS, [jobs])
        conn.execute("VACUUM ANALYZE django_dbq_job")


def proc_status_kb(pid: int) -> dict[str, int]:
    """VmHWM and RssAnon of a process, in kB (empty once it has gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in lines)
    return {k: int(v.split()[0]) for k, v in fields if k in ("VmHWM", "RssAnon")}


def watch_backends(server: str, done: threading.Event, peaks: dict[int, dict]) -> None:
    """Record each backend's peak VmHWM and RssAnon until `done` is set."""
    with psycopg.connect(with_database(server, "postgres"), autocommit=True) as conn:
        while not done.is_set():
            for pid, kind in conn.execute(BACKENDS, [DATABASE]).fetchall():
                status = proc_status_kb(pid)
                peak = peaks.setdefault(pid, {"type": kind, "VmHWM": 0, "RssAnon": 0})
                for key, value in status.items():
                    peak[key] = max(peak[key], value)
            time.sleep(0.1)


def migrate(server: str, source: Path) -> dict:
    """Run `manage.py migrate` in a child process, watching it and its backends."""
    env = {
        **os.environ,
        "DATABASE_URL": server,
        "DBQ_BENCH_DATABASE": DATABASE,
        "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
        "PYTHONPATH": str(source),
    }
    peaks: dict[int, dict] = {}
    done = threading.Event()
    watcher = threading.Thread(target=watch_backends, args=(server, done, peaks))
    watcher.start()
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "django", "migrate", "-v", "2"],
        cwd=source,
        env=env,
        stdout=subprocess.PIPE,  # a few dozen lines: the pipe's buffer holds them
        text=True,
    )
    _, status, usage = os.wait4(child.pid, 0)
    output = child.stdout.read()
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"migrate failed with status {status}")
    return {
        "seconds": seconds,
        "python_maxrss_mb": usage.ru_maxrss / 1024,
        # -v 2 prints "Applying django_dbq.0002_ledger... OK (12.345s)".
        "migrations": [
            line.strip() for line in output.splitlines() if "Applying django_dbq" in line
        ],
        "backends": [
            {"pid": pid, **p, "VmHWM_mb": p["VmHWM"] / 1024, "RssAnon_mb": p["RssAnon"] / 1024}
            for pid, p in peaks.items()
            if p["VmHWM"]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout whose code migrates")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    args = parser.parse_args()

    server = database_url(ROOT / ".pgdata")
    started = time.perf_counter()
    build(server, args.jobs)
    built = time.perf_counter() - started
    try:
        result = migrate(server, args.source.resolve())
    finally:
        if not args.keep:
            with psycopg.connect(with_database(server, "postgres"), autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(DATABASE)
                    )
                )
    print(f"built {args.jobs + 6:,} jobs at 3.3's schema in {built:.1f} s")
    print(
        f"migrate: {result['seconds']:.1f} s, Python peak RSS {result['python_maxrss_mb']:.0f} MB"
    )
    for line in result["migrations"]:
        print(f"  {line}")
    for backend in result["backends"]:
        print(
            f"  backend {backend['pid']} ({backend['type']}): peak VmHWM"
            f" {backend['VmHWM_mb']:.0f} MB, peak RssAnon {backend['RssAnon_mb']:.0f} MB"
        )
    machine = {"python": platform.python_version(), "cpus": os.cpu_count()}
    print(json.dumps({"benchmark": "upgrade", "jobs": args.jobs + 6, **result, **machine}))


if __name__ == "__main__":
    main()
