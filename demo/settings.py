"""Settings of the demo project: its own database on the server DATABASE_URL names
(or on the embedded PostgreSQL), the demo jobs, and nothing else."""

from pathlib import Path

from django_dbq.testing import database_settings, database_url, with_database

BASE_DIR = Path(__file__).resolve().parent.parent
SERVER_URL = database_url(BASE_DIR / ".pgdata")
DEMO_URL = with_database(SERVER_URL, "dbq_demo")

SECRET_KEY = "demo-only"
USE_TZ = True
INSTALLED_APPS = ["pgtrigger", "django_dbq"]
DATABASES = {"default": database_settings(DEMO_URL)}

JOBS = {
    "import_cats": {
        "tasks": ["demo.jobs.fetch_cats", "demo.jobs.weigh_cats", "demo.jobs.report"],
        "creation_hook": "demo.jobs.stamp_request",
        "failure_hook": "demo.jobs.apologise",
    },
    "send_newsletter": ["demo.jobs.send_newsletter"],
}
