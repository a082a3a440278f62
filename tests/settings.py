"""Django settings for the test suite: a real PostgreSQL, from DATABASE_URL or embedded."""

from pathlib import Path

from django_dbq.testing import database_settings, database_url

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "tests-only"
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "pgtrigger",
    "django_dbq",
]
DATABASES = {"default": database_settings(database_url(BASE_DIR / ".pgdata"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

JOBS = {
    "testjob": {"tasks": ["tests.jobs.task_one"]},
    "twotasks": {"tasks": ["tests.jobs.task_one", "tests.jobs.task_two"]},
    "listform": ["tests.jobs.task_one", "tests.jobs.task_two"],
    "hooked": {
        "tasks": ["tests.jobs.task_one"],
        "creation_hook": "tests.jobs.creation_hook",
    },
    "badhook": {
        "tasks": ["tests.jobs.task_one"],
        "creation_hook": "tests.jobs.failing_creation_hook",
    },
}
LOGGING_CONFIG = None
