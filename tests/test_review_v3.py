"""Review of dbq_create_jobs_v3, the fast Job.__init__ and the kept cursor (commit 24ef968)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.test_security import counts, owned, owner  # noqa: F401 (fixtures)

U = "gen_random_uuid()"
OK = '\'[{"name": "testjob"}]\''

REFUSED = [
    # payloads the v2 function refuses
    (f"ARRAY[{U}]", '\'[{"name": "testjob", "attempts": 3}]\'', "ARRAY[0]"),
    (f"ARRAY[{U}]", '\'[{"name": "testjob", "state": "CANCELLED"}]\'', "ARRAY[0]"),
    (f"ARRAY[{U}]", '\'[{"name": "testjob", "state": 5}]\'', "ARRAY[0]"),
    (f"ARRAY[{U}]", '\'[{"name": "testjob", "run_after": "tomorrow"}]\'', "ARRAY[0]"),
    (
        f"ARRAY[{U}]",
        '\'[{"name": "testjob", "run_after": "99999-01-01T00:00:00+00:00"}]\'',
        "ARRAY[0]",
    ),
    (f"ARRAY[{U}]", "'[null]'", "ARRAY[0]"),
    (f"ARRAY[{U}]", "'[\"x\"]'", "ARRAY[0]"),
    (f"ARRAY[{U}]", "'[[]]'", "ARRAY[0]"),
    (f"ARRAY[{U}]", "'[]'", "ARRAY[0]"),
    (f"ARRAY[{U}]", "NULL", "ARRAY[0]"),
    (f"ARRAY[{U}]", OK, "NULL"),
    # bounds and shapes
    (
        f"('[5:5]={{' || {U} || '}}')::uuid[]",
        '\'[{"name": "testjob", "attempts": 3}]\'',
        "ARRAY[0]",
    ),
    (f"ARRAY[{U}]", '\'[{"name": "testjob", "attempts": 3}]\'', "'[0:0]={0}'::int[]"),
    (f"ARRAY[{U}, {U}]", OK, "'[0:1]={0,1}'::int[]"),
    (f"ARRAY[{U}]", OK, "ARRAY[2147483647]"),
    (f"ARRAY[{U}]", OK, "ARRAY[-2147483648]"),
    (f"ARRAY[[{U}], [{U}]]", OK, "ARRAY[0, 0]"),
    (f"ARRAY[{U}, {U}]", OK, "ARRAY[[0], [0]]"),
    (f"ARRAY[{U}, {U}]", OK, "ARRAY[[0, 0]]"),
    ("'{}'::uuid[]", OK, "ARRAY[0]"),
    (f"ARRAY[{U}]", OK, "'{}'::int[]"),
    ("NULL", OK, "NULL"),
    ("'{}'::uuid[]", '\'[{"name": "testjob", "attempts": 3}]\'', "'{}'::int[]"),
    # duplicate ids within one call
    (
        "ARRAY['00000000-0000-0000-0000-000000000001'::uuid, '00000000-0000-0000-0000-000000000001']",
        OK,
        "ARRAY[0, 0]",
    ),
]


@pytest.mark.parametrize(("job_ids", "payloads", "which"), REFUSED)
def test_v3_refuses_or_writes_nothing(owned, owner, job_ids, payloads, which):  # noqa: F811
    before = counts(owner)
    with owned.connect("app") as conn:
        try:
            rows = conn.execute(
                f"SELECT * FROM dbq_create_jobs_v3({job_ids}, {payloads}, {which})"
            ).fetchall()
        except psycopg.DatabaseError as error:
            print("refused:", type(error).__name__, error)
        else:
            assert rows == [], rows
    assert counts(owner) == before


def test_v3_an_existing_job_id_is_refused_whole(owned, owner):  # noqa: F811
    job_id = uuid.uuid4()
    with owned.connect("app") as conn:
        conn.execute(
            "SELECT * FROM dbq_create_jobs_v3(%s, %s, %s)", [[job_id], '[{"name": "testjob"}]', [0]]
        )
    before = counts(owner)
    with owned.connect("app") as conn:
        with pytest.raises(psycopg.errors.IntegrityError):
            conn.execute(
                "SELECT * FROM dbq_create_jobs_v3(%s, %s, %s)",
                [[uuid.uuid4(), job_id], '[{"name": "testjob"}]', [0, 0]],
            )
    assert counts(owner) == before


def test_v3_each_projection_row_is_its_created_event(owned, owner):  # noqa: F811
    ids = [uuid.uuid4() for _ in range(4)]
    payloads = (
        '[{"name": "a", "queue_name": "q1", "priority": 3, "workspace": {"x": 1}},'
        ' {"name": "b", "state": "READY", "run_after": "2030-01-01T00:00:00+00:00"}]'
    )
    with owned.connect("worker") as conn:
        conn.execute(
            "SELECT * FROM dbq_create_jobs_v3(%s::uuid[], %s::jsonb, %s::int[])",
            [ids, payloads, [1, 0, 0, 1]],
        )
    rows = owner.execute(
        "SELECT j.id, j.name, j.state, j.queue_name, j.priority, j.workspace, j.run_after IS NOT NULL,"
        " e.payload->>'name' FROM dbq_app.django_dbq_job j"
        " JOIN dbq_app.django_dbq_jobevent e ON e.job_id = j.id AND e.version = 1"
        " WHERE j.id = ANY(%s)",
        [ids],
    ).fetchall()
    got = {r[0]: r[1:] for r in rows}
    assert got[ids[0]][:2] == ("b", "READY") and got[ids[0]][5] is True
    assert got[ids[1]] == ("a", "NEW", "q1", 3, {"x": 1}, False, "a")
    assert got[ids[2]] == got[ids[1]]
    assert got[ids[3]] == got[ids[0]]


# --- The kept cursor -------------------------------------------------------

import sys  # noqa: E402
import threading  # noqa: E402

import pgtrigger  # noqa: E402
from django.db import DatabaseError, connection, transaction  # noqa: E402
from django.db.transaction import TransactionManagementError  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from django_dbq.models import Job  # noqa: E402


def jobs(n):
    return [Job(name="testjob") for _ in range(n)]


@pytest.mark.django_db(transaction=True)
def test_kept_cursor__after_close_and_a_terminated_backend():
    Job.objects.bulk_create(jobs(2))
    connection.close()
    Job.objects.bulk_create(jobs(2))
    pid = connection.connection.info.backend_pid
    with psycopg.connect(**connection.get_connection_params()) as killer:
        killer.execute("SELECT pg_terminate_backend(%s)", [pid])
    with pytest.raises(DatabaseError):
        Job.objects.bulk_create(jobs(2))
    connection.close_if_unusable_or_obsolete()
    Job.objects.bulk_create(jobs(2))
    assert Job.objects.count() == 6


@pytest.mark.django_db
def test_kept_cursor__errors_in_atomic_broken_transaction_debug_and_ignore():
    first = Job.objects.bulk_create(jobs(2))
    with pytest.raises(DatabaseError):
        with transaction.atomic():
            Job.objects.bulk_create([Job(id=first[0].pk, name="testjob"), Job(name="testjob")])
    with transaction.atomic():
        try:
            with connection.cursor() as c:
                c.execute("SELECT 1/0")
        except DatabaseError:
            pass
        # Django marks no rollback for an error caught outside an inner atomic:
        # the server refuses, as it did with a cursor per statement.
        with pytest.raises(DatabaseError, match="current transaction is aborted"):
            Job.objects.bulk_create(jobs(2))
        transaction.set_rollback(True)
    with pytest.raises(TransactionManagementError):
        with transaction.atomic():
            try:
                with transaction.atomic():
                    Job.objects.bulk_create([Job(id=first[0].pk, name="testjob")] + jobs(1))
            except DatabaseError:
                pass
            connection.needs_rollback = True
            Job.objects.bulk_create(jobs(2))
    with CaptureQueriesContext(connection) as queries:
        Job.objects.bulk_create(jobs(3))
        Job.objects.bulk_create(jobs(1200), batch_size=500)
    assert any("dbq_create_jobs_v3" in q["sql"] for q in queries.captured_queries)
    with pgtrigger.ignore("django_dbq.Job:protect_projection"):
        pass
    with pgtrigger.ignore():
        Job.objects.bulk_create(jobs(2))
    Job.objects.bulk_create(jobs(2))
    assert Job.objects.count() == 2 + 3 + 1200 + 2 + 2


@pytest.mark.django_db(transaction=True)
def test_kept_cursor__a_connection_shared_between_threads_gives_each_its_own_rows():
    # Django lets a connection be shared (inc_thread_sharing, as LiveServerThread
    # does); psycopg serialises statements on it, but a cursor's results belong
    # to whoever executed last.
    connection.ensure_connection()
    connection.inc_thread_sharing()
    errors = []
    made = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)

    from django.db import connections as handler

    shared = handler["default"]

    def enqueue(n):
        from django.db import connections

        connections["default"] = shared
        try:
            for _ in range(200):
                batch = jobs(n)
                Job.objects.bulk_create(batch)
                made.extend(batch)
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    try:
        threads = [threading.Thread(target=enqueue, args=(n,)) for n in (2, 3, 4, 5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        connection.dec_thread_sharing()
        sys.setswitchinterval(interval)
    assert errors == []
    stored = dict(Job.objects.values_list("pk", "created"))
    assert [job.pk for job in made if job.created != stored[job.pk]] == []


# --- Job.__init__ -----------------------------------------------------------

from django.db import models  # noqa: E402
from django.db.models.signals import pre_init  # noqa: E402


def by_django(cls, **kwargs):
    instance = cls.__new__(cls)
    models.Model.__init__(instance, **kwargs)
    return instance


class Shouting(Job):
    class Meta:
        proxy = True
        # Not an installed app: makemigrations does not see these test-only proxies.
        app_label = "dbq_review_tests"

    def __setattr__(self, name, value):
        super().__setattr__(name, value.upper() if name == "name" else value)


class LowerQueue(Job):
    class Meta:
        proxy = True
        # Not an installed app: makemigrations does not see these test-only proxies.
        app_label = "dbq_review_tests"

    @property
    def queue_name(self):
        return self.__dict__["queue_name"]

    @queue_name.setter
    def queue_name(self, value):
        self.__dict__["queue_name"] = value.lower()


def test_job_init__a_subclass_setattr_or_property_sees_the_values_as_with_django():
    assert by_django(Shouting, name="a").name == "A"
    assert Shouting(name="a").name == "A"
    assert by_django(LowerQueue, queue_name="Q").queue_name == "q"
    assert LowerQueue(queue_name="Q").queue_name == "q"
    assert Job(name="a").name == "a"


def test_job_init__names_a_pre_init_receiver_adds_are_checked_as_with_django():
    def add(sender, args, kwargs, **extra):
        kwargs["colour"] = "red"

    pre_init.connect(add, sender=Job)
    try:
        with pytest.raises(TypeError, match="unexpected keyword arguments: 'colour'"):
            by_django(Job, name="a")
        with pytest.raises(TypeError, match="unexpected keyword arguments: 'colour'"):
            Job(name="a")
    finally:
        pre_init.disconnect(add, sender=Job)


# --- bulk_create's job ids ---------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "ids",
    [
        [str(uuid.uuid4()), uuid.uuid4()],
        [uuid.uuid4(), str(uuid.uuid4())],
        [uuid.uuid4().hex, uuid.uuid4()],
        [str(uuid.uuid4()), str(uuid.uuid4())],
    ],
)
def test_bulk_create__ids_given_as_text_among_uuids_as_before_v3(ids):
    # acdd4e5 (dbq_create_jobs_v2, one JSON document) took these.
    Job.objects.bulk_create([Job(id=job_id, name="testjob") for job_id in ids])
    assert set(Job.objects.values_list("pk", flat=True)) == {uuid.UUID(str(i)) for i in ids}
    # Many batches (pipelined) too.
    more = [Job(id=str(uuid.uuid4()) if n % 2 else uuid.uuid4(), name="testjob") for n in range(5)]
    Job.objects.bulk_create(more, batch_size=2)
    assert Job.objects.count() == len(ids) + 5
