"""Times a client stores (run_after, a saved created) stay within what every client can load;
a worker reads one outside that range (an older release stored it) without stopping."""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import psycopg
import pytest

from django_dbq.exceptions import InvalidJobError
from django_dbq.models import Job
from tests import scratch_roles as rv

UNLOADABLE = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]


@pytest.fixture(scope="module")
def owned():
    db = rv.create("created")
    yield db
    rv.drop(db)


@pytest.mark.parametrize("value", UNLOADABLE)
def test_the_app_role_cannot_save_a_created_no_client_can_load(owned, value):
    with owned.connect("app") as app:
        job = rv.create_job(app, state="COMPLETE", queue="unloadable")
        with pytest.raises(psycopg.errors.DataError):
            rv.save(app, job, created=value)


def test_a_worker_survives_a_job_whose_created_is_1_bc(owned):
    with owned.connect("app") as app:
        good = rv.create_job(app, queue="poisoned")
        bad = rv.create_job(app, queue="poisoned")
    # As an older release let an application store it: the owner's own append.
    with owned.connect("owner") as owner:
        owner.execute(
            "INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)"
            " VALUES (%s, 2, 'updated', jsonb_build_object('created', %s::text))",
            [bad, UNLOADABLE[0]],
        )
    burst = owned.manage("worker", "worker", "poisoned", "--burst", timeout=120)
    with owned.connect("owner") as owner:
        state = dict(
            owner.execute(
                "SELECT id, state FROM django_dbq_job WHERE id = ANY(%s)", [[good, bad]]
            ).fetchall()
        )
    assert burst.returncode == 0, burst.stderr[-400:]
    assert state[good] == "COMPLETE"


@pytest.mark.django_db(transaction=True)
def test_saving_an_aware_created_of_year_1_east_of_utc_is_refused_in_python():
    job = Job.objects.create(name="testjob")
    job.created = datetime(1, 1, 1, tzinfo=dt_timezone(timedelta(hours=14)))
    with pytest.raises(InvalidJobError, match="out of range"):
        job.save()
    assert Job.objects.get(pk=job.pk).version == 1


# What held: the session's TimeZone and DateStyle do not change what a saved
# `created` means, live or replayed; odd but valid ISO text replays alike.


def test_held__a_created_saved_under_any_session_settings_replays_to_the_live_table(owned):
    with owned.connect("app") as app:
        app.execute("SET TimeZone = 'Pacific/Chatham'")
        app.execute("SET DateStyle = 'SQL, DMY'")
        jobs = {}
        for value in (
            "2020-06-01T12:00:00+05:45",
            "2020-01-01T24:00:00+00:00",
            "2020-01-01T00:00:60+00:00",
            "2020-01-01T00:00:00+15:59:59",
            "2020-01-01 00:00:00Z",
        ):
            job = rv.create_job(app, state="COMPLETE", queue="sessions")
            rv.save(app, job, created=value)
            jobs[job] = value
        for value in ("13/01/2030 00:00:00+00", "2030-01-13T00:00:00", "infinity", "now"):
            with pytest.raises(psycopg.errors.InvalidDatetimeFormat):
                rv.save(app, rv.create_job(app, state="COMPLETE", queue="sessions"), created=value)
    with owned.connect("owner") as owner:
        owner.execute("SET TimeZone = 'America/St_Johns'")
        for job, value in jobs.items():
            assert owner.execute(
                "SELECT created = %s::timestamptz FROM django_dbq_job WHERE id = %s",
                [value.replace("T", " "), job],
            ).fetchone() == (True,)
    verify = owned.manage("owner", "replay_events", "--verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
