"""Shared by the benchmark scripts: a fresh database, timing, statistics, output."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")


def setup(fresh: bool = True) -> None:
    """Start Django on a new, migrated benchmark database (dbq_bench by default)."""
    import django
    import psycopg
    from django.conf import settings
    from psycopg import sql

    if fresh:
        name = sql.Identifier(settings.DATABASES["default"]["NAME"])
        with psycopg.connect(settings.SERVER_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def reset() -> None:
    """Empty the queue between runs (through the retention path) and tidy the tables."""
    from django.db import connection

    from django_dbq.models import Job

    Job.objects.delete_old(hours=-1)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE django_dbq_job")
        cursor.execute("VACUUM ANALYZE django_dbq_jobevent")


def sql(query: str, params: Any = None) -> list[tuple[Any, ...]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def summary(values: list[float]) -> dict[str, float]:
    """Median and spread (min, max) of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import django
    import psycopg

    server = sql("SHOW server_version")[0][0]
    return {
        "python": platform.python_version(),
        "django": django.get_version(),
        "psycopg": psycopg.__version__,
        "postgresql": server.split()[0],
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


def start_workers(count: int, *args: str) -> list[subprocess.Popen[bytes]]:
    """Start `count` worker processes for the benchmark database."""
    return [
        subprocess.Popen(
            [sys.executable, "-m", "django", "worker", *args],
            cwd=ROOT,
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "benchmarks.settings"},
            stdout=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def print_table(title: str, rows: list[tuple[str, dict[str, float] | str]], unit: str = "") -> None:
    print(f"\n{title}")
    for label, value in rows:
        if isinstance(value, dict):
            print(
                f"  {label:<38} {value['median']:>12,.1f} {unit:<8}"
                f" (min {value['min']:,.1f}, max {value['max']:,.1f})"
            )
        else:
            print(f"  {label:<38} {value}")
