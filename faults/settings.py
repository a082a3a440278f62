"""Settings of the fault suite: a database of its own (dbq_faults) on the server
FAULTS_DATABASE_URL or DATABASE_URL names, or on the embedded PostgreSQL."""

import os
from pathlib import Path

from django_dbq.testing import database_settings, database_url, with_database

BASE_DIR = Path(__file__).resolve().parent.parent
SERVER_URL = os.environ.get("FAULTS_DATABASE_URL") or database_url(BASE_DIR / ".pgdata")
FAULTS_URL = with_database(SERVER_URL, "dbq_faults")

SECRET_KEY = "faults-only"
USE_TZ = True
INSTALLED_APPS = ["pgtrigger", "django_dbq"]
DATABASES = {"default": database_settings(FAULTS_URL)}
JOBS = {
    "steps": ["faults.tasks.step_one", "faults.tasks.step_two", "faults.tasks.step_three"],
    "nasty": ["faults.tasks.nasty"],
    "probe": ["faults.tasks.probe"],
    "saver": ["faults.tasks.saver"],
}
# Scenario 7 deploys a release that adds a job; the workers of the release before
# it (FAULTS_RELEASE=old) do not know that job.
if os.environ.get("FAULTS_RELEASE") != "old":
    JOBS["saver_new"] = ["faults.tasks.saver"]
DBQ_LEASE_SECONDS = float(os.environ.get("DBQ_LEASE_SECONDS", 3))
DBQ_POLL_SECONDS = 0.5
LOGGING_CONFIG = None
