"""Settings for the benchmarks: a database of their own (dbq_bench, or the name in
DBQ_BENCH_DATABASE) on the server DATABASE_URL names, or on the embedded PostgreSQL."""

import os
from pathlib import Path

from django_dbq.testing import database_settings, database_url, with_database

BASE_DIR = Path(__file__).resolve().parent.parent
SERVER_URL = database_url(BASE_DIR / ".pgdata")
BENCH_URL = with_database(SERVER_URL, os.environ.get("DBQ_BENCH_DATABASE", "dbq_bench"))

SECRET_KEY = "benchmarks-only"
USE_TZ = True
INSTALLED_APPS = ["pgtrigger", "django_dbq"]
DATABASES = {"default": database_settings(BENCH_URL)}
JOBS = {
    "noop": ["benchmarks.tasks.noop"],
    "noop3": ["benchmarks.tasks.noop", "benchmarks.tasks.noop2", "benchmarks.tasks.noop3"],
}

DBQ_MAX_BATCH_SIZE = int(os.environ.get("DBQ_MAX_BATCH_SIZE", 100))
