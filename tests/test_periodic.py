"""Periodic jobs: workers enqueue each tick of settings.JOBS' schedules exactly once."""

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection

from django_dbq.models import Job, JobEvent, Schedule
from django_dbq.projections.replay import verify_projection
from django_dbq.schedules import MAX_CATCH_UP, PeriodicJob, parse_periodic_job
from tests.test_roles import connect_as, refused, roles, url_as  # noqa: F401 (a fixture)
from tests.test_worker_processes import (  # noqa: F401 (stop_leftover_workers: a fixture)
    ROOT,
    database_url_of_this_test,
    finish,
    start_worker,
    stop_leftover_workers,
    wait_for,
)

UTC = datetime.UTC
TASK = ["tests.jobs.task_one"]


def schedules(**jobs):
    """The DBQ_TEST_SCHEDULES of worker processes: more JOBS, each with a schedule."""
    return {"DBQ_TEST_SCHEDULES": json.dumps(jobs)}


def periodic(schedule, **options):
    return {"tasks": TASK, "schedule": schedule, "queue_name": "periodic", **options}


def ticks_of(name):
    """The ticks of the created events of a schedule's jobs, in the order enqueued."""
    events = JobEvent.objects.filter(kind="created", payload__name=name).order_by("id")
    return [datetime.datetime.fromisoformat(e.payload["tick"]) for e in events]


def seen_schedule(name, last_tick):
    """A schedule a worker saw and enqueued until last_tick (as the owner may write it)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO django_dbq_schedule (name, since, last_tick) VALUES (%s, %s, %s)",
            [name, last_tick - datetime.timedelta(days=1), last_tick],
        )


def minute(moment):
    return moment.replace(second=0, microsecond=0)


def now():
    return datetime.datetime.now(UTC)


# Worker processes.


@pytest.mark.django_db(transaction=True)
def test_three_workers__enqueue_each_two_second_tick_exactly_once_over_a_minute():
    env = schedules(
        every_2s=periodic(2),
        cron_2s=periodic("*/2 * * * * *", creation_hook="tests.jobs.creation_hook"),
    )
    # Idle workers look on their own only every 30 s: the tick itself must wake them.
    workers = [start_worker(**env, DBQ_POLL_SECONDS="30") for _ in range(3)]
    wait_for(lambda: Schedule.objects.count() == 2, timeout=30)
    started = now()
    time.sleep(61)
    stopped = now()
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    results = [finish(worker) for worker in workers]

    assert [code for code, _, _ in results] == [0, 0, 0], results[0][2][-2000:]
    # Every even second after the start, but the last one (its call may be in flight).
    first = started.replace(microsecond=0) + datetime.timedelta(seconds=1)
    first += datetime.timedelta(seconds=first.second % 2)
    expected = set()
    while first <= stopped - datetime.timedelta(seconds=1):
        expected.add(first)
        first += datetime.timedelta(seconds=2)
    for name in ("every_2s", "cron_2s"):
        ticks = ticks_of(name)
        assert [t for t, n in Counter(ticks).items() if n > 1] == [], name
        assert expected <= set(ticks), sorted(expected - set(ticks))
        assert len(expected) >= 29
        gaps = {(b - a).total_seconds() for a, b in zip(ticks, ticks[1:], strict=False)}
        assert gaps == {2.0}, name
    lateness = [
        (e.at - datetime.datetime.fromisoformat(e.payload["tick"])).total_seconds()
        for e in JobEvent.objects.filter(kind="created", payload__has_key="tick")
    ]
    assert max(lateness) < 1.0, sorted(lateness)[-5:]
    hooked = Job.objects.filter(name="cron_2s").values_list("workspace", flat=True)
    assert set(map(json.dumps, hooked)) == {'{"hooked": true}'}
    assert verify_projection().ok


@pytest.mark.django_db(transaction=True)
def test_missed_tick__is_enqueued_once_the_latest_when_workers_start():
    seen_schedule("every_minute", minute(now()) - datetime.timedelta(minutes=10))
    env = schedules(every_minute=periodic("* * * * *"))

    workers = [start_worker("--burst", **env) for _ in range(2)]
    results = [finish(worker) for worker in workers]
    before = minute(now())

    assert [code for code, _, _ in results] == [0, 0], results[0][2][-2000:]
    (tick,) = ticks_of("every_minute")
    assert before - datetime.timedelta(minutes=1) <= tick <= before
    assert tick == minute(tick)
    assert Schedule.objects.get(name="every_minute").last_tick == tick


@pytest.mark.django_db(transaction=True)
def test_missed_tick__recorded_in_the_created_event_and_the_ledger_verifies():
    seen_schedule("every_minute", minute(now()) - datetime.timedelta(minutes=3))
    env = schedules(every_minute=periodic("* * * * *", priority=7, workspace={"report": "daily"}))

    code, _, err = finish(start_worker("--burst", **env))

    assert code == 0, err[-2000:]
    (job,) = Job.objects.filter(name="every_minute")
    (created,) = job.events.all()
    assert created.kind == "created"
    assert created.payload["tick"] == ticks_of("every_minute")[0].isoformat()
    assert created.payload["tick"].endswith(":00+00:00")
    assert (job.queue_name, job.priority, job.workspace) == ("periodic", 7, {"report": "daily"})
    assert Schedule.objects.get(name="every_minute").last_job_id == job.pk
    assert verify_projection().ok
    verified = subprocess.run(
        [sys.executable, "-m", "django", "replay_events", "--verify", "--settings=tests.settings"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url_of_this_test()},
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.django_db(transaction=True)
def test_catch_up__enqueues_each_missed_tick_up_to_the_bound():
    last = minute(now())
    seen_schedule("few_missed", last - datetime.timedelta(minutes=5))
    seen_schedule("many_missed", last - datetime.timedelta(minutes=150))
    env = schedules(
        few_missed=periodic("* * * * *", catch_up=True),
        many_missed=periodic("* * * * *", catch_up=True),
    )

    code, _, err = finish(start_worker("--burst", **env))

    assert code == 0, err[-2000:]
    few, many = ticks_of("few_missed"), ticks_of("many_missed")
    assert len(few) in (5, 6)  # 6 when a minute began while the worker started
    assert [(b - a).total_seconds() for a, b in zip(few, few[1:], strict=False)] == [60.0] * (
        len(few) - 1
    )
    assert few[0] == last - datetime.timedelta(minutes=4)
    assert len(many) == MAX_CATCH_UP
    assert many[-1] == few[-1]
    assert many[0] == many[-1] - datetime.timedelta(minutes=MAX_CATCH_UP - 1)


@pytest.mark.django_db(transaction=True)
def test_first_seen_schedule__starts_from_now_and_missed_nothing():
    env = schedules(new_year=periodic("0 0 1 1 *"))
    before = now()

    code, _, err = finish(start_worker("--burst", **env))

    assert code == 0, err[-2000:]
    row = Schedule.objects.get(name="new_year")
    assert before - datetime.timedelta(seconds=1) < row.since < now()
    assert row.last_tick is None
    assert ticks_of("new_year") == []


@pytest.mark.django_db(transaction=True)
def test_no_schedules_option__the_worker_enqueues_no_tick():
    seen_schedule("every_minute", minute(now()) - datetime.timedelta(minutes=10))
    env = schedules(every_minute=periodic("* * * * *"))

    code, _, err = finish(start_worker("--burst", "--no-schedules", **env))

    assert code == 0, err[-2000:]
    assert ticks_of("every_minute") == []


# Roles.


@pytest.mark.django_db(transaction=True)
def test_roles__the_app_role_cannot_enqueue_ticks_or_write_the_schedule_table(roles):  # noqa: F811
    seen_schedule("every_minute", minute(now()) - datetime.timedelta(minutes=10))
    due = minute(now())
    tick = json.dumps([{"tick": due.isoformat(), "job_id": None, "payload": None}])
    with connect_as(roles["app"]) as conn:
        refused(conn, "SELECT * FROM dbq_enqueue_ticks_v1('every_minute', %s)", [tick])
        refused(conn, "UPDATE django_dbq_schedule SET last_tick = now() + interval '1 year'")
        refused(conn, "INSERT INTO django_dbq_schedule (name, since) VALUES ('x', now())")
        refused(conn, "DELETE FROM django_dbq_schedule")
        refused(conn, "TRUNCATE django_dbq_schedule")
        assert conn.execute("SELECT count(*) FROM django_dbq_schedule").fetchone() == (1,)
    with connect_as(roles["worker"]) as conn:
        refused(conn, "UPDATE django_dbq_schedule SET last_tick = now()")
        refused(conn, "DELETE FROM django_dbq_schedule")
        # The worker's way: its function, which enqueues the tick.
        conn.execute("SELECT * FROM dbq_enqueue_ticks_v1('every_minute', %s)", [tick])
    assert Schedule.objects.get(name="every_minute").last_tick == due


@pytest.mark.django_db(transaction=True)
def test_refused_ticks__are_logged_and_the_worker_goes_on_draining(roles):  # noqa: F811
    seen_schedule("every_minute", minute(now()) - datetime.timedelta(minutes=10))
    with connection.cursor() as cursor:
        cursor.execute(
            f'REVOKE EXECUTE ON FUNCTION dbq_enqueue_ticks_v1(text, jsonb) FROM "{roles["worker"]}"'
        )
    jobs = Job.objects.bulk_create([Job(name="testjob") for _ in range(5)])

    ran = subprocess.run(
        [sys.executable, "-m", "django", "worker", "--burst", "--settings=tests.settings"],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": url_as(roles["worker"]),
            **schedules(every_minute=periodic("* * * * *")),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "event=schedule_error" in ran.stderr
    assert "database_error" not in ran.stderr
    assert Job.objects.filter(pk__in=[j.pk for j in jobs], state="COMPLETE").count() == 5
    assert ticks_of("every_minute") == []


@pytest.mark.django_db(transaction=True)
def test_dbq_schedule__lists_schedules_for_a_role_that_may_only_read(roles, monkeypatch):  # noqa: F811
    seen_schedule("every_minute", minute(now()) - datetime.timedelta(minutes=10))
    seen_schedule("removed", datetime.datetime(2026, 1, 1, tzinfo=UTC))
    monkeypatch.setenv(
        "DBQ_TEST_SCHEDULES",
        json.dumps(
            {
                "every_minute": periodic("* * * * *"),
                "every_30s": {"tasks": TASK, "schedule": 30, "catch_up": True},
            }
        ),
    )
    ran = subprocess.run(
        [sys.executable, "-m", "django", "dbq_schedule", "--settings=tests.settings"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url_as(roles["maintenance"])},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert ran.returncode == 0, ran.stderr[-2000:]
    lines = [line.split() for line in ran.stdout.splitlines()]
    assert lines[0] == ["schedule", "every", "queue", "catch_up", "last", "tick", "next", "tick"]
    rows = {line[0]: line[1:] for line in lines[1:]}
    last = (minute(now()) - datetime.timedelta(minutes=10)).isoformat()
    assert rows["every_minute"][:5] == ["*", "*", "*", "*", "*"]
    assert rows["every_minute"][5:8] == ["periodic", "no", last]
    assert rows["every_minute"][-1] == "(due)"  # its missed tick, for the next worker
    assert rows["every_30s"][:6] == ["every", "30", "s", "default", "yes", "-"]
    next_tick = datetime.datetime.fromisoformat(rows["every_30s"][6])
    assert next_tick.timestamp() % 30 == 0 and 0 < (next_tick - now()).total_seconds() <= 30
    assert rows["removed"] == [
        "(not",
        "in",
        "settings.JOBS)",
        "-",
        "-",
        "2026-01-01T00:00:00+00:00",
        "-",
    ]


# Settings and ticks (no database).


@pytest.mark.parametrize(
    ("schedule", "words"),
    [
        ("61 * * * *", "out of range"),
        ("* * *", "has 3 fields"),
        ("* * * * * * *", "has 7 fields"),
        ("every day", "has 2 fields"),
        ("0 0 30 2 *", "not a cron expression"),
        (0, "positive number"),
        (-5, "positive number"),
        (float("nan"), "positive number"),
        (True, "cron expression (a string) or a number"),
        ([5], "cron expression (a string) or a number"),
    ],
)
def test_check__a_bad_schedule_fails_manage_py_check(settings, schedule, words):
    settings.JOBS = {"report": {"tasks": TASK, "schedule": schedule}}

    with pytest.raises(SystemCheckError) as raised:
        call_command("check", stdout=StringIO(), stderr=StringIO())

    assert "django_dbq.E014" in str(raised.value)
    assert words in str(raised.value)


@pytest.mark.parametrize(
    ("options", "expected_id", "words"),
    [
        ({"catch_up": "yes"}, "django_dbq.E015", "catch_up must be True or False"),
        ({"catch_up": 1}, "django_dbq.E015", "catch_up must be True or False"),
        ({"queue_name": "q" * 21}, "django_dbq.E016", "queue_name must be a string"),
        ({"priority": 40000}, "django_dbq.E016", "priority must be an integer"),
        ({"workspace": [1]}, "django_dbq.E016", "workspace must be a dict"),
    ],
)
def test_check__bad_options_of_a_periodic_job_fail_manage_py_check(
    settings, options, expected_id, words
):
    settings.JOBS = {"report": {"tasks": TASK, "schedule": "*/5 * * * *", **options}}

    with pytest.raises(SystemCheckError) as raised:
        call_command("check", stdout=StringIO(), stderr=StringIO())

    assert expected_id in str(raised.value) and words in str(raised.value)


def test_check__good_schedules_pass(settings):
    settings.JOBS = {
        "five": {"tasks": TASK, "schedule": "*/5 * * * *", "catch_up": True},
        "six": {"tasks": TASK, "schedule": "*/10 * * * * *", "queue_name": "q", "priority": 3},
        "interval": {"tasks": TASK, "schedule": 0.5, "workspace": {"a": 1}},
    }

    call_command("check", stdout=StringIO())


def at(text):
    return datetime.datetime.fromisoformat(text)


def test_interval__ticks_are_multiples_of_it_since_the_epoch():
    job = PeriodicJob("j", 30.0)

    assert job.next_tick(at("2026-12-02T10:00:07+00:00")) == at("2026-12-02T10:00:30+00:00")
    assert job.next_tick(at("2026-12-02T10:00:30+00:00")) == at("2026-12-02T10:01:00+00:00")
    assert job.latest_tick(at("2026-12-02T10:00:30+00:00")) == at("2026-12-02T10:00:30+00:00")
    assert job.due_ticks(at("2026-12-02T10:00:00+00:00"), at("2026-12-02T10:02:10+00:00")) == [
        at("2026-12-02T10:02:00+00:00")
    ]


def test_cron_with_six_fields__reads_the_seconds_first():
    job = PeriodicJob("j", "*/20 * * * * *")

    assert job.next_tick(at("2026-12-02T10:00:07+00:00")) == at("2026-12-02T10:00:20+00:00")


def test_catch_up__due_ticks_are_the_latest_missed_ones_up_to_the_bound():
    job = PeriodicJob("j", "* * * * *", catch_up=True)
    after, now_ = at("2026-12-01T00:00:00+00:00"), at("2026-12-02T00:00:30+00:00")

    ticks = job.due_ticks(after, now_)

    assert len(ticks) == MAX_CATCH_UP
    assert ticks[-1] == at("2026-12-02T00:00:00+00:00")
    assert ticks[0] == at("2026-12-01T22:21:00+00:00")
    assert job.due_ticks(ticks[-1], now_) == []


def paris_ticks(settings, schedule, start, count):
    settings.TIME_ZONE = "Europe/Paris"
    job = parse_periodic_job("j", {"tasks": TASK, "schedule": schedule})
    ticks, tick = [], at(start)
    for _ in range(count):
        tick = job.next_tick(tick)
        ticks.append(tick.isoformat())
    return ticks


def test_dst__a_daily_time_in_the_skipped_hour_runs_once_at_three(settings):
    # 2026-03-29 in Paris: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
    assert paris_ticks(settings, "30 2 * * *", "2026-03-28T12:00:00+01:00", 3) == [
        "2026-03-29T01:00:00+00:00",  # 03:00 CEST
        "2026-03-30T00:30:00+00:00",  # 02:30 CEST
        "2026-03-31T00:30:00+00:00",
    ]


def test_dst__a_daily_time_in_the_repeated_hour_runs_twice(settings):
    # 2026-10-25 in Paris: 03:00 CEST goes back to 02:00 CET; 02:30 comes twice.
    assert paris_ticks(settings, "30 2 * * *", "2026-10-24T12:00:00+02:00", 3) == [
        "2026-10-25T00:30:00+00:00",  # 02:30 CEST
        "2026-10-25T01:30:00+00:00",  # 02:30 CET
        "2026-10-26T01:30:00+00:00",
    ]


def test_dst__an_interval_ignores_the_clock_change(settings):
    assert paris_ticks(settings, 3600, "2026-10-25T00:30:00+02:00", 3) == [
        "2026-10-24T23:00:00+00:00",
        "2026-10-25T00:00:00+00:00",
        "2026-10-25T01:00:00+00:00",
    ]
