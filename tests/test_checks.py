import pytest
from django.core.checks import run_checks

from django_dbq.checks import check_installed_apps, check_jobs_setting, check_lease_seconds


def ids(errors):
    return [error.id for error in errors]


def test_check__the_test_settings_are_clean():
    assert run_checks() == []


@pytest.mark.parametrize(
    ("jobs", "expected_id", "words"),
    [
        ({"a": {"tasks": []}}, "django_dbq.E004", "lists no tasks"),
        ({"a": {}}, "django_dbq.E004", "lists no tasks"),
        ({"a": {"tasks": ["tests.jobs.missing"]}}, "django_dbq.E007", "does not import"),
        ({"a": ["nowhere.at_all"]}, "django_dbq.E007", "'nowhere.at_all' does not import"),
        (
            {"a": {"tasks": ["tests.jobs.task_one"], "failure_hook": "tests.jobs.nope"}},
            "django_dbq.E007",
            "failure_hook 'tests.jobs.nope'",
        ),
        ({"a": "tests.jobs.task_one"}, "django_dbq.E002", "must be a dict"),
        ({"a": {"tasks": ["tests.jobs." + "x" * 100]}}, "django_dbq.E006", "over 100"),
        (
            {"a": ["tests.jobs.task_one", "tests.jobs.task_one"]},
            "django_dbq.E008",
            "more than once",
        ),
    ],
)
def test_check__reports_bad_jobs_settings(settings, jobs, expected_id, words):
    settings.JOBS = jobs

    errors = check_jobs_setting()

    assert ids(errors) == [expected_id]
    assert words in errors[0].msg


def test_check__both_jobs_forms_are_accepted(settings):
    settings.JOBS = {"a": ["tests.jobs.task_one"], "b": {"tasks": ["tests.jobs.task_two"]}}

    assert check_jobs_setting() == []


def test_check__pgtrigger_must_be_installed(settings):
    settings.INSTALLED_APPS = [app for app in settings.INSTALLED_APPS if app != "pgtrigger"]

    assert ids(check_installed_apps()) == ["django_dbq.E001"]


@pytest.mark.parametrize("seconds", [0.5, 3601, "soon"])
def test_check__lease_seconds_must_fit_the_databases_cap(settings, seconds):
    settings.DBQ_LEASE_SECONDS = seconds

    (error,) = check_lease_seconds()

    assert error.id == "django_dbq.E011" and "from 1 to 3600" in error.hint


def test_check__default_lease_seconds_pass(settings):
    assert check_lease_seconds() == []


def test_check__a_migrated_databases_history_passes(db):
    from django_dbq.checks import check_migration_history

    assert check_migration_history(databases=["default"]) == []
