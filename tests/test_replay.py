"""Replay equals live: the projection rebuilt from the ledger is the live one."""

import math
import random
import uuid
from datetime import timedelta
from io import StringIO

import orjson
import pytest
from django.core.management import CommandError, call_command
from django.db import DataError, IntegrityError, connection, transaction
from django.utils import timezone

from django_dbq.events.append import append_events
from django_dbq.events.models import EventKind, JobEvent
from django_dbq.models import Job
from django_dbq.projections.replay import replay_events, verify_projection
from tests.factories import JobFactory

pytestmark = pytest.mark.django_db

PAYLOADS = {
    "claimed": lambda: {"worker": "w1", "host": "h", "pid": 1, "lease_until": "2030-01-01T00:00Z"},
    "task_done": lambda: {
        "task": "tests.jobs.task_one",
        "next_task": "tests.jobs.task_two",
        "workspace": {"one": True},
        "duration": 0.5,
    },
    "completed": lambda: {
        "task": "tests.jobs.task_two",
        "workspace": {"done": 1},
        "duration": 0.25,
    },
    "failed": lambda: {
        "task": "tests.jobs.task_one",
        "workspace": {"w": 2},
        "duration": 0.1,
        "error": {"type": "ValueError", "message": "boom", "traceback": "..."},
    },
    "stopping": lambda: {"worker": "w1"},
    "lease_renewed": lambda: {"worker": "w1", "lease_until": "2031-01-01T00:00Z"},
    "lease_expired": lambda: {"worker": "w1", "lease_until": "2030-01-01T00:00Z"},
    "lease_revoked": lambda: {"worker": "w1", "reason": "host lost", "by": "ops"},
    "released": lambda: {"worker": "w1", "state": "NEW"},
    "retried": lambda: {
        "task": "tests.jobs.task_one",
        "error": {"type": "ValueError", "message": "again", "traceback": "..."},
        "attempt": 1,
        "run_after": "2030-01-01T00:00:00+00:00",
    },
    "cancelled": lambda: {"reason": "not needed"},
    "cancel_requested": lambda: {"reason": "stop it"},
    "requeued": lambda: {"reason": "try again"},
    "updated": lambda: {"priority": 3, "workspace": {"u": 1}},
}

# A legal path through the state machine that ends with each kind.
PATHS = {
    "created": [],
    "claimed": ["claimed"],
    "task_done": ["claimed", "task_done"],
    "completed": ["claimed", "completed"],
    "failed": ["claimed", "failed"],
    "stopping": ["claimed", "stopping"],
    "lease_renewed": ["claimed", "lease_renewed"],
    "lease_expired": ["claimed", "lease_expired"],
    "lease_revoked": ["claimed", "lease_revoked"],
    "released": ["claimed", "released"],
    "retried": ["claimed", "retried"],
    "cancelled": ["cancelled"],
    "cancel_requested": ["claimed", "cancel_requested"],
    "requeued": ["claimed", "failed", "requeued"],
    "updated": ["updated"],
}


def append(job_id, kind, payload):
    append_events([(job_id, kind, orjson.dumps(payload).decode())])


def assert_replay_equals_live():
    result = verify_projection()
    assert result.ok, [d.describe() for d in result.drift]
    return result


def snapshot():
    """Every column of every projection row."""
    return sorted(Job.objects.values_list(*(f.attname for f in Job._meta.concrete_fields)))


def test_every_event_kind_has_a_replay_path():
    assert set(PATHS) == set(EventKind.values)


@pytest.mark.parametrize("kind", sorted(PATHS))
def test_replay__rebuilds_a_history_ending_in(kind):
    job = JobFactory(name="twotasks", workspace={"start": 1})
    for step in PATHS[kind]:
        append(job.id, step, PAYLOADS[step]())
    before = snapshot()

    assert replay_events() == len(PATHS[kind]) + 1
    assert snapshot() == before
    assert_replay_equals_live()


@pytest.mark.parametrize(
    ("path", "state", "next_task", "workspace"),
    [
        (["claimed"], "PROCESSING", "tests.jobs.task_one", {"start": 1}),
        (["claimed", "task_done"], "READY", "tests.jobs.task_two", {"one": True}),
        (["claimed", "completed"], "COMPLETE", "", {"done": 1}),
        (["claimed", "failed"], "FAILED", "tests.jobs.task_one", {"w": 2}),
        (["claimed", "stopping"], "STOPPING", "tests.jobs.task_one", {"start": 1}),
        (["claimed", "stopping", "task_done"], "READY", "tests.jobs.task_two", {"one": True}),
        (["claimed", "lease_expired"], "READY", "tests.jobs.task_one", {"start": 1}),
        (["claimed", "lease_renewed"], "PROCESSING", "tests.jobs.task_one", {"start": 1}),
        (["claimed", "released"], "NEW", "tests.jobs.task_one", {"start": 1}),
        (["claimed", "retried"], "READY", "tests.jobs.task_one", {"start": 1}),
        (["cancelled"], "CANCELLED", "tests.jobs.task_one", {"start": 1}),
        (["claimed", "cancel_requested"], "PROCESSING", "tests.jobs.task_one", {"start": 1}),
        (
            ["claimed", "cancel_requested", "task_done"],
            "CANCELLED",
            "tests.jobs.task_two",
            {"one": True},
        ),
        (["claimed", "cancel_requested", "completed"], "COMPLETE", "", {"done": 1}),
        (["claimed", "failed", "requeued"], "READY", "tests.jobs.task_one", {"w": 2}),
        (["cancelled", "requeued"], "READY", "tests.jobs.task_one", {"start": 1}),
        (["updated"], "NEW", "tests.jobs.task_one", {"u": 1}),
    ],
)
def test_apply__each_kind_moves_the_projection(path, state, next_task, workspace):
    job = JobFactory(name="twotasks", workspace={"start": 1})
    for step in path:
        append(job.id, step, PAYLOADS[step]())

    stored = Job.objects.get(pk=job.pk)
    assert (stored.state, stored.next_task, stored.workspace) == (state, next_task, workspace)
    assert stored.version == len(path) + 1
    assert stored.modified == job.events.last().at


class Oracle:
    """What the projection should hold, computed in Python from the same events."""

    RUNNING = ("PROCESSING", "STOPPING")
    IDLE = ("NEW", "READY", "FAILED", "COMPLETE", "CANCELLED")

    def __init__(self):
        self.cancel_requested = set()

    def next_state(self, job_id, kind, state, payload):
        """The state after the event, or None when it is illegal; tracks pending cancels."""
        asked = job_id in self.cancel_requested
        if kind == "updated":
            wanted = payload.get("state", state)
            legal = wanted == state or (state in self.IDLE and wanted in self.IDLE)
            return wanted if legal else None
        if kind == "claimed":
            return "PROCESSING" if state in ("NEW", "READY") else None
        if state not in self.RUNNING:
            return {
                ("cancelled", "NEW"): "CANCELLED",
                ("cancelled", "READY"): "CANCELLED",
                ("requeued", "FAILED"): "READY",
                ("requeued", "CANCELLED"): "READY",
            }.get((kind, state))
        if kind in ("task_done", "retried", "lease_expired"):
            return "CANCELLED" if asked else "READY"
        if kind == "released":
            return None if state != "PROCESSING" else ("CANCELLED" if asked else "NEW")
        return {
            "completed": "COMPLETE",
            "failed": "FAILED",
            "stopping": "STOPPING" if state == "PROCESSING" else None,
            "lease_renewed": state,
            "cancel_requested": state,
        }.get(kind)

    def applied(self, job_id, kind, new_state):
        if kind == "cancel_requested":
            self.cancel_requested.add(job_id)
        elif new_state not in self.RUNNING:
            self.cancel_requested.discard(job_id)


def random_event(rng, state):
    kind = rng.choice(
        [
            "claimed",
            "task_done",
            "completed",
            "failed",
            "stopping",
            "lease_renewed",
            "lease_expired",
            "released",
            "retried",
            "cancelled",
            "cancel_requested",
            "requeued",
            "updated",
            "updated",
        ]
    )
    payload = dict(PAYLOADS[kind]())
    if kind == "updated":
        payload = {}
        for field in rng.sample(
            ["priority", "workspace", "queue_name", "state", "run_after"], rng.randint(1, 3)
        ):
            payload[field] = {
                "priority": rng.randint(-5, 5),
                "workspace": {"n": rng.random()} if rng.random() < 0.9 else None,
                "queue_name": rng.choice(["default", "other"]),
                "state": rng.choice(
                    ["NEW", "READY", "FAILED", "COMPLETE", "CANCELLED", "PROCESSING"]
                ),
                "run_after": (timezone.now() + timedelta(seconds=rng.randint(-99, 99))).isoformat()
                if rng.random() < 0.8
                else None,
            }[field]
    elif "workspace" in payload:
        payload["workspace"] = {"r": rng.randint(0, 1000)}
    return kind, payload


def test_replay__equals_live_after_hundreds_of_random_histories():
    rng = random.Random(20261128)
    oracle = Oracle()
    jobs = Job.objects.bulk_create(
        [
            Job(
                name=rng.choice(["testjob", "twotasks"]),
                priority=rng.randint(-3, 3),
                state=rng.choice(["NEW", "NEW", "READY", "FAILED"]),
            )
            for _ in range(300)
        ]
    )
    states = {job.id: job.state for job in jobs}
    rejected = 0
    for step in range(3000):
        job_id = rng.choice(jobs).id
        kind, payload = random_event(rng, states[job_id])
        expected = oracle.next_state(job_id, kind, states[job_id], payload)
        try:
            with transaction.atomic():
                append(job_id, kind, payload)
        except IntegrityError:
            assert expected is None, (kind, states[job_id], payload)
            rejected += 1
        else:
            assert expected is not None, (kind, states[job_id], payload)
            states[job_id] = expected
            oracle.applied(job_id, kind, expected)
        if step % 1000 == 999:
            assert_replay_equals_live()

    assert dict(Job.objects.values_list("id", "state")) == states
    assert 0 < rejected < 3000
    result = assert_replay_equals_live()
    assert result.jobs == 300 and result.events == 300 + 3000 - rejected
    # The same histories replayed in slices of jobs, each slice round by round.
    sliced = verify_projection(slice_bytes=ledger_bytes() // 7)
    assert sliced.ok, [d.describe() for d in sliced.drift]
    assert (sliced.jobs, sliced.events) == (result.jobs, result.events)


def ledger_bytes():
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_table_size('django_dbq_jobevent')")
        return cursor.fetchone()[0]


def ledger_scans():
    """Full reads of the ledger in this transaction so far."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'django_dbq_jobevent'"
        )
        return cursor.fetchone()[0]


def ledger_rows_read():
    """Rows of the ledger read in this transaction so far, by scans and through indexes."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT seq_tup_read + idx_tup_fetch FROM pg_stat_xact_user_tables"
            " WHERE relname = 'django_dbq_jobevent'"
        )
        return cursor.fetchone()[0]


def test_replay__a_ledger_larger_than_a_slice_is_rebuilt_slice_by_slice():
    jobs = Job.objects.bulk_create([Job(name="twotasks") for _ in range(200)])
    for n, job in enumerate(jobs):
        for step in ["claimed", "task_done", "claimed", "completed"][: n % 5]:
            append(job.id, step, PAYLOADS[step]())
    before = snapshot()
    events = JobEvent.objects.count()
    size = ledger_bytes()

    # Four slices, ranges of job ids: each job in one of them.
    assert replay_events(slice_bytes=size // 4 + 1) == events

    assert snapshot() == before
    assert_replay_equals_live()


def test_replay_events_command__slices_as_asked(capsys):
    Job.objects.bulk_create(
        [Job(name="testjob", workspace={"pad": "x" * 600}) for _ in range(3000)]
    )
    megabytes = ledger_bytes() / 1024 / 1024
    assert megabytes > 1
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE django_dbq_jobevent")  # as autovacuum would have
    err = StringIO()

    call_command("replay_events", "--slice-mb", "1", "--verbosity", "2", stderr=err)
    # Slices of at most 1 MB, one progress line each.
    lines = err.getvalue().splitlines()
    assert len(lines) == math.ceil(megabytes), lines
    assert lines[-1].startswith(f"slice {len(lines)} of {len(lines)}: 3,000 events, ")
    assert lines[-1].endswith("about 0 s left")
    # Twenty slices, ranges of job ids each read through the index: the ledger once,
    # and once more for the sample of their bounds (the whole of a ledger this
    # small), where a slice read the whole ledger before. (Three slices of a table
    # this small are rightly read by three scans of it.)
    read = ledger_rows_read()
    replay_events(slice_bytes=ledger_bytes() // 20 + 1)
    assert ledger_rows_read() - read <= 2 * 3000
    scans = ledger_scans()
    assert verify_projection(slice_bytes=1024 * 1024).ok
    # verify_projection, inside this test's READ COMMITTED transaction, reads it
    # once (its copy is then read per slice); --verify then checks the chains.
    assert ledger_scans() - scans == 1
    call_command("replay_events", "--verify", "--slice-mb", "1")
    assert "ok: replaying 3000 events" in capsys.readouterr().out
    with pytest.raises(CommandError, match="'0' is not a positive whole number of megabytes"):
        call_command("replay_events", "--slice-mb", "0")


def test_replay__a_slice_size_that_is_not_positive_or_far_too_small_is_refused():
    job = JobFactory()
    with pytest.raises(DataError, match="slice_bytes must be a positive number of bytes, not 0"):
        replay_events(slice_bytes=0)
    with pytest.raises(DataError, match="slice_bytes 1 is too small for a ledger of"):
        replay_events(slice_bytes=1)
    assert list(Job.objects.values_list("id", flat=True)) == [job.id]


def force_drift(sql):
    with connection.cursor() as cursor:
        # Opens the projection's write guard by hand, as only a bug or an attack would.
        cursor.execute("SELECT set_config('dbq.applying', 'on', true)")
        cursor.execute(sql)
        cursor.execute("SELECT set_config('dbq.applying', '', true)")


def test_verify__reports_drift_column_by_column_and_exits_1():
    job = JobFactory()
    JobFactory()
    force_drift(f"UPDATE django_dbq_job SET priority = 7, state = 'FAILED' WHERE id = '{job.id}'")
    stderr = StringIO()

    with pytest.raises(SystemExit) as exited:
        call_command("replay_events", "--verify", stderr=stderr)

    assert exited.value.code == 1
    text = stderr.getvalue()
    assert "drift: 1 jobs differ" in text
    assert f"job {job.id}: priority: live=7 replayed=0; state: live=FAILED replayed=NEW" in text
    assert Job.objects.get(pk=job.pk).priority == 7  # verify leaves the live table alone


@pytest.mark.parametrize(
    ("change", "column"),
    [
        ("run_after = '2030-01-01T00:00Z'", "run_after"),  # NULL when replayed
        ("claimed_by = NULL", "claimed_by"),  # set when replayed
        ("""workspace = '{"a": 2}'""", "workspace"),
    ],
)
def test_verify__finds_drift_in_a_single_column_nulls_included(change, column):
    job = JobFactory(workspace={"a": 1})
    append(job.id, "claimed", PAYLOADS["claimed"]())
    force_drift(f"UPDATE django_dbq_job SET {change} WHERE id = '{job.id}'")

    result = verify_projection()

    assert result.drift_count == 1
    assert result.drift[0].describe().startswith(f"job {job.id}: {column}: live=")


def test_verify__reports_rows_missing_on_either_side():
    job = JobFactory()
    force_drift(f"DELETE FROM django_dbq_job WHERE id = '{job.id}'")

    result = verify_projection()

    assert result.drift_count == 1
    assert result.drift[0].describe() == (
        f"job {job.id}: missing from the live projection, present after replay"
    )


def test_verify__prints_a_one_line_summary_when_clean():
    JobFactory.create_batch(3)
    stdout = StringIO()

    call_command("replay_events", "--verify", stdout=stdout)

    assert stdout.getvalue().startswith("ok: replaying 3 events gives the live projection (3 jobs)")


def test_replay_events_command__repairs_drift():
    job = JobFactory()
    force_drift(f"UPDATE django_dbq_job SET priority = 7 WHERE id = '{job.id}'")
    stdout = StringIO()

    call_command("replay_events", stdout=stdout)

    assert stdout.getvalue().startswith("replayed 1 events")
    assert Job.objects.get(pk=job.pk).priority == 0
    assert_replay_equals_live()


def test_apply__a_claim_records_the_worker_and_its_lease():
    job = JobFactory()
    append(job.id, "claimed", PAYLOADS["claimed"]())
    claimed = Job.objects.get(pk=job.pk)
    append(job.id, "lease_renewed", PAYLOADS["lease_renewed"]())
    renewed = Job.objects.get(pk=job.pk)
    append(job.id, "completed", PAYLOADS["completed"]())
    done = Job.objects.get(pk=job.pk)

    assert (claimed.claimed_by, claimed.lease_until.year) == ("w1", 2030)
    assert (renewed.claimed_by, renewed.lease_until.year) == ("w1", 2031)
    assert (done.claimed_by, done.lease_until) == (None, None)


def test_apply__released_returns_the_job_to_its_waiting_state_only():
    job = JobFactory()
    append(job.id, "claimed", PAYLOADS["claimed"]())

    with pytest.raises(IntegrityError, match="illegal transition: released"):
        with transaction.atomic():
            append(job.id, "released", {"worker": "w1", "state": "COMPLETE"})
    append(job.id, "released", {"worker": "w1", "state": "READY"})
    assert Job.objects.get(pk=job.pk).state == "READY"


def test_replay__keeps_the_projection_indexes():
    def indexes():
        with connection.cursor() as cursor:
            # The definition as the columns and predicate it covers; PostgreSQL may
            # spell an equal predicate differently once it is parsed again.
            cursor.execute(
                "SELECT c.relname, pg_get_indexdef(i.indexrelid, 1, true),"
                " pg_get_indexdef(i.indexrelid, 3, true), i.indpred IS NOT NULL"
                " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE i.indrelid = 'django_dbq_job'::regclass AND i.indisvalid ORDER BY 1"
            )
            return cursor.fetchall()

    JobFactory.create_batch(3)
    before = indexes()

    replay_events()

    assert indexes() == before
    assert {row[0] for row in before} >= {
        "django_dbq_job_ready",
        "django_dbq_job_scheduled",
        "django_dbq_job_leased",
    }
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'django_dbq_job'::regclass AND contype = 'p'"
        )
        assert cursor.fetchall() == [("django_dbq_job_pkey", "PRIMARY KEY (id)")]


CREATED_PAYLOADS = [
    {"name": "testjob"},
    {"name": "testjob", "state": "READY", "queue_name": "other", "priority": -3},
    {"name": "testjob", "workspace": None, "next_task": "tests.jobs.task_one"},
    {"name": "testjob", "workspace": {"a": [1, 2]}, "run_after": "2030-01-01T00:00:00+00:00"},
    # As migration 0002 imports django-db-queue's rows.
    {
        "name": "testjob",
        "state": "FAILED",
        "imported": True,
        "created": "2020-01-01T00:00:00+00:00",
        "modified": "2020-01-02T00:00:00+00:00",
        "attempts": 2,
    },
]


def test_replay__created_rows_are_the_same_on_both_trigger_paths():
    with connection.cursor() as cursor:
        rows = [(uuid.uuid4(), p) for p in CREATED_PAYLOADS]
        cursor.execute(
            "INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)"
            " SELECT id, 1, 'created', p FROM unnest(%s::uuid[], %s::jsonb[]) AS t(id, p)",
            [[r[0] for r in rows], [orjson.dumps(r[1]).decode() for r in rows]],
        )
        waiting = JobFactory()
        mixed = [(uuid.uuid4(), p) for p in CREATED_PAYLOADS]
        cursor.execute(
            "INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)"
            " SELECT id, 1, 'created', p FROM unnest(%s::uuid[], %s::jsonb[]) AS t(id, p)"
            " UNION ALL SELECT %s, 2, 'claimed', '{\"worker\": \"w\"}'",
            [[r[0] for r in mixed], [orjson.dumps(r[1]).decode() for r in mixed], waiting.id],
        )
    short = Job.objects.in_bulk([r[0] for r in rows])
    general = Job.objects.in_bulk([r[0] for r in mixed])
    columns = [f.attname for f in Job._meta.concrete_fields if f.attname not in ("id",)]
    for (a_id, _), (b_id, _) in zip(rows, mixed, strict=True):
        a, b = short[a_id], general[b_id]
        differ = {c for c in columns if getattr(a, c) != getattr(b, c)}
        # created/modified are the events' times unless the payload names them.
        assert differ <= {"created", "modified"}, differ
    assert short[rows[-1][0]].attempts == 2 and short[rows[-1][0]].state == "FAILED"
    assert Job.objects.get(pk=waiting.pk).state == "PROCESSING"
    assert_replay_equals_live()


@pytest.mark.django_db
def test_replay__refuses_before_it_starts_while_a_foreign_key_references_the_projection():
    from django.core.management import CommandError, call_command

    job = Job.objects.create(name="testjob")
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE user_invoice (id serial PRIMARY KEY,"
            " job_id uuid REFERENCES django_dbq_job (id))"
        )
        cursor.execute("INSERT INTO user_invoice (job_id) VALUES (%s)", [job.id])

    with pytest.raises(CommandError, match=r"user_invoice \(user_invoice_job_id_fkey\)") as e:
        call_command("replay_events")
    assert "db_constraint=False" in str(e.value)
    assert Job.objects.get(pk=job.pk).state == Job.STATES.NEW


def test_verify_and_as_of__work_while_a_foreign_key_references_the_projection():
    job = Job.objects.create(name="testjob")
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE user_invoice (id serial PRIMARY KEY,"
            " job_id uuid REFERENCES django_dbq_job (id))"
        )
        cursor.execute("INSERT INTO user_invoice (job_id) VALUES (%s)", [job.id])
    stdout = StringIO()

    call_command("replay_events", "--verify", stdout=stdout)
    (everything,) = Job.objects.as_of(now)
    (one,) = Job.objects.filter(pk=job.pk).as_of(now)

    assert stdout.getvalue().startswith("ok: replaying 1 events")
    assert everything.id == one.id == job.id
    with connection.cursor() as cursor:
        cursor.execute("SELECT job_id FROM user_invoice")
        assert cursor.fetchall() == [(job.id,)]


@pytest.mark.django_db(transaction=True)
def test_delete_old_jobs__keeps_jobs_a_user_table_still_references():
    kept, gone = Job.objects.create(name="testjob"), Job.objects.create(name="testjob")
    for job in (kept, gone):
        job.state = Job.STATES.COMPLETE
        job.save()
    with connection.cursor() as cursor:
        # A user model's ForeignKey to Job, as Django makes it (checked at commit).
        cursor.execute(
            "CREATE TABLE invoice (id serial PRIMARY KEY,"
            " job_id uuid REFERENCES django_dbq_job (id) DEFERRABLE INITIALLY DEFERRED)"
        )
        cursor.execute("INSERT INTO invoice (job_id) VALUES (%s)", [kept.pk])
    try:
        # The cutoff an hour ahead: both jobs are old enough.
        assert Job.objects.delete_old(hours=-1) == 1
        assert list(Job.objects.values_list("pk", flat=True)) == [kept.pk]
        assert kept.events.count() == 2
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM invoice")
        assert Job.objects.delete_old(hours=-1) == 1
        assert not Job.objects.exists()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS invoice")
