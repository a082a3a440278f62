"""Django settings for the test suite: a real PostgreSQL, from DATABASE_URL or embedded."""

import json
import os
from pathlib import Path

from django_dbq.testing import database_settings, database_url

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "tests-only"
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "pgtrigger",
    "django_dbq",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ROOT_URLCONF = "tests.urls"

# Django's Tasks framework: built in from Django 6, the django-tasks backport on 5.2.
try:
    import django.tasks  # noqa: F401
except ImportError:
    INSTALLED_APPS.append("django_tasks")
TASKS = {
    "default": {"BACKEND": "django_dbq.backends.LedgerBackend", "QUEUES": ["default", "tasks"]}
}
DATABASES = {"default": database_settings(database_url(BASE_DIR / ".pgdata"))}
# A test database per run, so that two suites on one server do not drop each other's.
DATABASES["default"]["TEST"] = {"NAME": f"test_dbq_{os.getpid()}"}
# Subprocess tests of the connection options a user may set (README, Settings).
if os.environ.get("DBQ_TEST_SERVER_SIDE_BINDING"):
    DATABASES["default"]["OPTIONS"] = {"server_side_binding": True}
if os.environ.get("DBQ_TEST_PREPARE_THRESHOLD"):
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = 1
if os.environ.get("DBQ_TEST_POOL"):
    # Django's connection pool (psycopg_pool), small so that connections are reused.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {"min_size": 1, "max_size": 4}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

JOBS = {
    "testjob": {"tasks": ["tests.jobs.task_one"]},
    "keyed": {"tasks": ["tests.jobs.record_unique_key"]},
    "twotasks": {"tasks": ["tests.jobs.task_one", "tests.jobs.task_two"]},
    "listform": ["tests.jobs.task_one", "tests.jobs.task_two"],
    "hooked": {
        "tasks": ["tests.jobs.task_one"],
        "creation_hook": "tests.jobs.creation_hook",
    },
    "querying": {
        "tasks": ["tests.jobs.task_one"],
        "creation_hook": "tests.jobs.querying_creation_hook",
    },
    "hooks": {
        "tasks": ["tests.jobs.recorded_task"],
        "pre_task_hook": "tests.jobs.pre_task_hook",
        "post_task_hook": "tests.jobs.post_task_hook",
        "failure_hook": "tests.jobs.failure_hook",
    },
    "failing_pre": {
        "tasks": ["tests.jobs.recorded_task"],
        "pre_task_hook": "tests.jobs.failing_pre_task_hook",
        "post_task_hook": "tests.jobs.post_task_hook",
        "failure_hook": "tests.jobs.failure_hook",
    },
    "failing_post": {
        "tasks": ["tests.jobs.recorded_task"],
        "post_task_hook": "tests.jobs.failing_post_task_hook",
        "failure_hook": "tests.jobs.failure_hook",
    },
    "failing_failure_hook": {
        "tasks": ["tests.jobs.recorded_task"],
        "failure_hook": "tests.jobs.failing_failure_hook",
        "post_task_hook": "tests.jobs.post_task_hook",
    },
    "loses_its_job": {
        "tasks": ["tests.jobs.failing_after_losing_its_job"],
        "failure_hook": "tests.jobs.failure_hook",
        "post_task_hook": "tests.jobs.post_task_hook",
    },
    "fails_seen_by_its_hook": {
        "tasks": ["tests.jobs.recorded_task"],
        "failure_hook": "tests.jobs.failure_hook_that_reads_the_job",
    },
    "notes_neighbour": ["tests.jobs.notes_neighbour_state"],
    "exits": ["tests.jobs.exiting_task"],
    "unstorable": ["tests.jobs.unstorable_workspace_task"],
    "counted": ["tests.jobs.record_run", "tests.jobs.record_run_again"],
    "counted_once": ["tests.jobs.record_run"],
    "saves_slowly": ["tests.jobs.saving_slowly"],
    # A lost worker's job counts an attempt: these are retried at once.
    "killed_once": {
        "tasks": ["tests.jobs.sleep_on_first_run"],
        "retry_backoff": "constant",
        "retry_delay": 0,
    },
    "kills_its_worker_once": {
        "tasks": ["tests.jobs.kill_worker_on_first_run"],
        "retry_backoff": "constant",
        "retry_delay": 0,
    },
    "kills_its_worker": {
        "tasks": ["tests.jobs.kill_worker"],
        "retries": 2,
        "retry_backoff": "constant",
        "retry_delay": 0.5,
    },
    "saves": ["tests.jobs.saving_task"],
    "flaky": {
        "tasks": ["tests.jobs.task_one", "tests.jobs.flaky_task"],
        "retries": 2,
        "retry_backoff": "constant",
        "retry_delay": 0,
        "failure_hook": "tests.jobs.failure_hook",
        "post_task_hook": "tests.jobs.post_task_hook",
    },
    "badhook": {
        "tasks": ["tests.jobs.task_one"],
        "creation_hook": "tests.jobs.failing_creation_hook",
    },
}
# Periodic jobs (a JSON object of more JOBS), for the worker processes of
# tests/test_periodic.py alone: every other test's workers would enqueue their ticks.
if os.environ.get("DBQ_TEST_SCHEDULES"):
    JOBS.update(json.loads(os.environ["DBQ_TEST_SCHEDULES"]))
LOGGING_CONFIG = None

# Worker timing; subprocess tests shorten the lease through the environment.
DBQ_LEASE_SECONDS = float(os.environ.get("DBQ_LEASE_SECONDS", 30))
DBQ_POLL_SECONDS = float(os.environ.get("DBQ_POLL_SECONDS", 1))
DBQ_SHUTDOWN_GRACE = (
    float(os.environ["DBQ_SHUTDOWN_GRACE"]) if "DBQ_SHUTDOWN_GRACE" in os.environ else None
)

# The ledger's key (seals), for the manage.py processes of tests that seal.
DBQ_LEDGER_KEY = os.environ.get("DBQ_TEST_LEDGER_KEY") or None

# Retention by the workers, for the manage.py processes of tests that run it.
DBQ_RETENTION_HOURS = (
    float(os.environ["DBQ_TEST_RETENTION_HOURS"])
    if "DBQ_TEST_RETENTION_HOURS" in os.environ
    else None
)
DBQ_RETENTION_SECONDS = float(os.environ.get("DBQ_TEST_RETENTION_SECONDS", 3600))
