"""Pausing a queue: no claims while paused, a prompt start on resume, and the queue ledger."""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from io import StringIO

import orjson
import psycopg
import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.utils import timezone

from django_dbq.exceptions import InvalidQueueError
from django_dbq.models import Job, Queue, QueueEvent
from django_dbq.projections.replay import verify_projection
from django_dbq.queues import default_by, pause_queue, paused_queues, resume_queue
from tests.test_roles import connect_as, manage, roles  # noqa: F401 (a fixture)
from tests.test_worker_processes import (  # noqa: F401 (stop_leftover_workers: a fixture)
    ROOT,
    database_url_of_this_test,
    finish,
    start_worker,
    stop_leftover_workers,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True)

# Idle workers look on their own only every 30 s: what wakes them sooner is a NOTIFY.
SLOW_POLL = {"DBQ_POLL_SECONDS": "30"}


def state(job):
    return Job.objects.get(pk=job.pk).state


def kinds(job):
    return list(Job.objects.get(pk=job.pk).events.values_list("kind", flat=True))


def run(*args):
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip()


def idle_worker(queue, **env):
    """A worker process on `queue`, started and idle (it has run a first job)."""
    worker = start_worker(queue, **{**SLOW_POLL, **env})
    probe = Job.objects.create(name="testjob", queue_name=queue)
    wait_for(lambda: state(probe) == Job.STATES.COMPLETE, timeout=30)
    return worker


def test_pause__an_idle_worker_runs_no_job_enqueued_while_paused_and_queue_depth_counts_it():
    worker = idle_worker("paused")

    assert pause_queue("paused", "deploying", by="tests") is True
    job = Job.objects.create(name="testjob", queue_name="paused")  # its NOTIFY wakes the worker
    time.sleep(2)

    assert kinds(job) == ["created"]
    assert run("queue_depth", "paused") == "event=queue_depths paused=1"
    assert Job.get_queue_depths() == {"paused": 1}
    assert worker.poll() is None  # still running, just idle


def test_resume__runs_the_waiting_job_within_about_a_second():
    idle_worker("resumed")
    pause_queue("resumed")
    job = Job.objects.create(name="testjob", queue_name="resumed")
    time.sleep(1)
    assert state(job) == Job.STATES.NEW

    started = time.monotonic()
    assert resume_queue("resumed") is True
    wait_for(lambda: state(job) == Job.STATES.COMPLETE, timeout=5, step=0.01)

    # The worker polls every 30 s: the resumption's NOTIFY woke it.
    assert time.monotonic() - started < 1.0
    assert kinds(job) == ["created", "claimed", "completed"]


def test_pause__holds_across_a_worker_restart_and_for_a_burst_worker():
    worker = idle_worker("restart")
    pause_queue("restart", "incident 42")
    job = Job.objects.create(name="testjob", queue_name="restart")

    worker.send_signal(signal.SIGTERM)
    code, _, err = finish(worker)
    assert code == 0, err[-2000:]
    restarted = start_worker("restart", DBQ_POLL_SECONDS="0.2")
    burst_code, burst_out, burst_err = finish(start_worker("restart", "--burst"))
    time.sleep(2)  # ten polls of the restarted worker

    assert burst_code == 0, burst_err[-2000:]
    assert 'Queue "restart" is paused' in burst_out and "incident 42" in burst_out
    assert kinds(job) == ["created"]
    resume_queue("restart")
    wait_for(lambda: state(job) == Job.STATES.COMPLETE, timeout=5)
    assert restarted.poll() is None


def test_pause__a_busy_worker_claims_nothing_after_its_current_batch(runs_file):
    Job.objects.bulk_create(
        [Job(name="counted_once", queue_name="busy", workspace={"sleep": 0.01}) for _ in range(400)]
    )
    start_worker("busy")
    wait_for(lambda: runs_file.read_text().count("\n") >= 20, timeout=30)

    pause_queue("busy")
    time.sleep(1)  # the batch claimed before the pause finishes (or is released)
    done = Job.objects.filter(queue_name="busy", state=Job.STATES.COMPLETE).count()
    time.sleep(2)

    assert Job.objects.filter(queue_name="busy", state=Job.STATES.COMPLETE).count() == done
    assert Job.objects.filter(queue_name="busy", state=Job.STATES.PROCESSING).count() == 0
    assert 0 < done < 400


def test_history__records_who_when_why_and_the_database_role():
    before = timezone.now()
    assert run("pause_queue", "emails", "--reason", "smtp down") == (
        "paused queue 'emails'; workers claim none of its jobs until resumed"
    )
    again = run("pause_queue", "emails", "--reason", "still down")
    resumed = run("resume_queue", "emails", "--by", "alice")
    not_paused = run("resume_queue", "emails")
    after = timezone.now()

    assert "was paused already" in again and "smtp down" in again
    assert "nothing recorded" in again
    assert resumed == "resumed queue 'emails'"
    assert not_paused == "queue 'emails' was not paused; nothing recorded"
    with connection.cursor() as cursor:
        cursor.execute("SELECT session_user")
        (role,) = cursor.fetchone()
    events = list(QueueEvent.objects.filter(queue_id="emails"))
    assert [(e.version, e.kind, e.payload) for e in events] == [
        (1, "paused", {"reason": "smtp down", "by": default_by(), "role": role}),
        (2, "resumed", {"by": "alice", "role": role}),
    ]
    assert before <= events[0].at <= events[1].at <= after
    queue = Queue.objects.get(name="emails")
    assert (queue.paused, queue.reason, queue.by, queue.since, queue.version) == (
        False,
        None,
        "alice",
        events[1].at,
        2,
    )
    assert paused_queues() == {}


def test_dbq_stats__shows_a_paused_queue_with_its_reason_who_and_when():
    Job.objects.create(name="testjob", queue_name="stats")
    pause_queue("stats", "quota", by="bob")
    pause_queue("empty", "", by="carol")  # a paused queue without jobs is listed too

    table = run("dbq_stats")
    data = orjson.loads(run("dbq_stats", "--json"))["queues"]

    since = Queue.objects.get(name="stats").since.isoformat()
    assert data["stats"]["paused"] == {
        "reason": "quota",
        "by": "bob",
        "role": Queue.objects.get(name="stats").role,
        "since": since,
    }
    assert data["stats"]["states"] == {"NEW": 1}
    assert data["empty"]["paused"]["by"] == "carol"
    assert data.get("default", {}).get("paused") is None
    assert table.splitlines()[0].split()[-1] == "paused"
    assert f"paused: stats since {since} by bob" in table and ": quota" in table


def test_verify__compares_the_queue_projection_and_replay_rebuilds_it():
    pause_queue("a", "one")
    resume_queue("a")
    pause_queue("a", "two")
    pause_queue("b")
    assert verify_projection().ok
    with connection.cursor() as cursor, transaction.atomic():
        # The owner, past the guard: drift that only a replay of the ledger finds.
        cursor.execute("SELECT set_config('dbq.applying', 'on', true)")
        cursor.execute("UPDATE django_dbq_queue SET paused = false, reason = 'x' WHERE name = 'a'")
        cursor.execute("DELETE FROM django_dbq_queue WHERE name = 'b'")

    result = verify_projection()
    with transaction.atomic():  # READ COMMITTED: verify reads from one copy
        in_transaction = verify_projection()
    stderr = StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("replay_events", "--verify", stdout=StringIO(), stderr=stderr)

    assert not result.ok and result.drift_count == 0
    assert (result.queue_events, result.queues) == (4, 2)
    assert [d.describe() for d in result.queue_drift] == [
        "queue a: paused: live=false replayed=true; reason: live=x replayed=two",
        "queue b: missing from the live projection, present after replay",
    ]
    assert [d.describe() for d in in_transaction.queue_drift] == [
        d.describe() for d in result.queue_drift
    ]
    assert exited.value.code == 1
    assert "drift: 2 queues differ between live and replay" in stderr.getvalue()

    assert run("replay_events").startswith("replayed 4 events")
    assert verify_projection().ok
    assert set(paused_queues()) == {"a", "b"}
    assert paused_queues()["a"].reason == "two"


def test_ledger__refuses_illegal_transitions_and_stays_append_only_even_for_the_owner():
    pause_queue("guarded")
    with connection.cursor() as cursor:
        for statement, message in [
            (
                "INSERT INTO django_dbq_queueevent (queue_name, version, kind, payload)"
                " VALUES ('guarded', 2, 'paused', '{}')",
                "illegal transition: paused event on queue guarded, which is paused",
            ),
            (
                "INSERT INTO django_dbq_queueevent (queue_name, version, kind, payload)"
                " VALUES ('guarded', 5, 'resumed', '{}')",
                "has version 5, expected 2",
            ),
            ("UPDATE django_dbq_queueevent SET kind = 'resumed'", "append-only"),
            ("DELETE FROM django_dbq_queueevent", "append-only"),
            ("UPDATE django_dbq_queue SET paused = false", "projection of the queue ledger"),
            ("TRUNCATE django_dbq_queue", "projection of the queue ledger"),
        ]:
            with pytest.raises(Exception, match=message), transaction.atomic():
                cursor.execute(statement)
    assert list(QueueEvent.objects.values_list("kind", flat=True)) == ["paused"]
    assert paused_queues()["guarded"].version == 1


def test_roles__the_app_role_pauses_and_resumes_the_worker_role_only_reads(roles):  # noqa: F811
    paused = manage(roles["app"], "pause_queue", "ops", "--reason", "by the app role")
    assert paused.returncode == 0, paused.stderr[-2000:]
    assert QueueEvent.objects.get(queue_id="ops").payload["role"] == roles["app"]

    with connect_as(roles["worker"]) as conn:
        for call in (
            "SELECT * FROM dbq_pause_queue_v1('ops2', '', 'w')",
            "SELECT * FROM dbq_resume_queue_v1('ops', 'w')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(call)
        # It reads the pause, as its claims do.
        assert conn.execute("SELECT name, paused FROM django_dbq_queue").fetchall() == [
            ("ops", True)
        ]
    stats = manage(roles["worker"], "dbq_stats", "--json")
    assert stats.returncode == 0, stats.stderr[-2000:]
    assert orjson.loads(stats.stdout)["queues"]["ops"]["paused"]["reason"] == "by the app role"
    refused = manage(roles["worker"], "resume_queue", "ops")
    assert refused.returncode != 0 and "permission denied" in refused.stderr

    resumed = manage(roles["app"], "resume_queue", "ops")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert list(QueueEvent.objects.values_list("kind", flat=True)) == ["paused", "resumed"]


RAW_WRITES = [
    "INSERT INTO django_dbq_queueevent (queue_name, version, kind, payload)"
    " VALUES ('raw', 1, 'paused', '{}')",
    "UPDATE django_dbq_queueevent SET kind = 'resumed'",
    "DELETE FROM django_dbq_queueevent",
    "TRUNCATE django_dbq_queueevent",
    "INSERT INTO django_dbq_queue VALUES ('raw', true, '', '', '', now(), 1)",
    "UPDATE django_dbq_queue SET paused = false",
    "DELETE FROM django_dbq_queue",
    "TRUNCATE django_dbq_queue",
    "SELECT setval('django_dbq_queueevent_id_seq', 1)",
]


def test_raw_writes__to_the_queue_tables_are_refused_below_the_owner(roles):  # noqa: F811
    pause_queue("raw")
    for kind in ("worker", "app", "maintenance"):
        with connect_as(roles[kind]) as conn:
            conn.execute("SET dbq.applying = 'on'")
            conn.execute("SET dbq.retention = 'on'")
            for statement in RAW_WRITES:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
    assert list(QueueEvent.objects.values_list("queue_id", "kind")) == [("raw", "paused")]
    assert paused_queues()["raw"].version == 1


def test_bad_input__gives_a_clear_error_and_writes_nothing():
    unknown = subprocess.run(
        [
            sys.executable,
            "-m",
            "django",
            "pause_queue",
            "q",
            "--bogus",
            "--settings=tests.settings",
        ],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url_of_this_test()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2
    assert "unrecognized arguments: --bogus" in unknown.stderr

    too_long = "q" * 21
    for command in ("pause_queue", "resume_queue"):
        with pytest.raises(CommandError, match="1 to 20 characters .* not 'q{21}' \\(21 char"):
            run(command, too_long)
    with pytest.raises(CommandError, match="reason is a string of at most 1000"):
        run("pause_queue", "q", "--reason", "r" * 1001)
    for bad in ("", None, too_long):
        with pytest.raises(InvalidQueueError):
            pause_queue(bad)
    # The database says the same to a caller that skips the Python checks.
    with connection.cursor() as cursor:
        for call, params in [
            ("SELECT * FROM dbq_pause_queue_v1(%s, '', NULL)", [too_long]),
            ("SELECT * FROM dbq_pause_queue_v1('q', %s, NULL)", ["r" * 1001]),
            ("SELECT * FROM dbq_resume_queue_v1(%s, NULL)", [""]),
        ]:
            with pytest.raises(Exception, match="django_dbq: .* (characters|at most)"):
                with transaction.atomic():
                    cursor.execute(call, params)

    assert QueueEvent.objects.count() == 0
    assert Queue.objects.count() == 0


def test_admin__pauses_and_resumes_queues_with_the_reason_and_user(client):
    User.objects.create_superuser("ops", "ops@example.com", "pw")
    client.login(username="ops", password="pw")
    job = Job.objects.create(name="testjob", queue_name="adminq")

    paused = client.post(
        "/admin/django_dbq/job/",
        {"action": "pause_queues", "_selected_action": [str(job.pk)], "reason": "from the admin"},
        follow=True,
    )
    listed = client.get("/admin/django_dbq/queue/")
    resumed = client.post(
        "/admin/django_dbq/queue/",
        {"action": "resume", "_selected_action": ["adminq"], "reason": ""},
        follow=True,
    )

    assert "Paused 1 queues: adminq." in paused.content.decode()
    assert "from the admin" in listed.content.decode()
    assert "Resumed 1 queues: adminq." in resumed.content.decode()
    assert [
        (e.kind, e.payload.get("reason"), e.payload["by"]) for e in QueueEvent.objects.all()
    ] == [
        ("paused", "from the admin", "admin:ops"),
        ("resumed", None, "admin:ops"),
    ]
    page = client.get("/admin/django_dbq/queue/adminq/change/")
    assert page.status_code == 200 and "from the admin" in page.content.decode()
    assert timezone.now() - Queue.objects.get(name="adminq").since < timedelta(minutes=1)
