"""Unique jobs: one job per unique key waits or runs; the database enforces it."""

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from django.db import IntegrityError, connection
from django.utils import timezone

from django_dbq.exceptions import DuplicateJobError, InvalidJobError
from django_dbq.models import Job, JobEvent
from django_dbq.projections.replay import verify_projection
from django_dbq.testing import with_database

ROOT = Path(__file__).resolve().parent.parent


def created_payloads():
    return list(JobEvent.objects.filter(kind="created").values_list("payload", flat=True))


@pytest.mark.django_db
def test_create__with_a_key_that_a_waiting_job_holds_raises_and_writes_nothing():
    first = Job.objects.create(name="testjob", unique_key="invoice-42")

    with pytest.raises(DuplicateJobError) as raised:
        Job.objects.create(name="testjob", unique_key="invoice-42", workspace={"n": 2})

    assert raised.value.job == first
    assert raised.value.unique_key == "invoice-42"
    assert "waiting" in str(raised.value) and "on_duplicate='replace'" in str(raised.value)
    assert Job.objects.count() == 1
    assert JobEvent.objects.count() == 1


@pytest.mark.django_db
def test_save_of_a_new_job__with_a_held_key_raises_too():
    Job.objects.create(name="testjob", unique_key="k")
    job = Job(name="testjob", unique_key="k")

    with pytest.raises(DuplicateJobError):
        job.save()

    assert job._state.adding
    assert Job.objects.count() == 1


@pytest.mark.django_db
def test_unique_key__is_in_the_created_event_and_the_projection():
    job = Job.objects.create(name="testjob", unique_key="report-7")

    assert created_payloads()[0]["unique_key"] == "report-7"
    assert Job.objects.get(pk=job.pk).unique_key == "report-7"
    assert job.unique_key == "report-7"


@pytest.mark.django_db
def test_a_finished_job__frees_its_key():
    first = Job.objects.create(name="testjob", unique_key="k")
    first.cancel()

    second = Job.objects.create(name="testjob", unique_key="k")

    assert second.pk != first.pk
    assert Job.objects.filter(unique_key="k").count() == 2


@pytest.mark.django_db
def test_jobs_without_a_key__are_never_duplicates():
    Job.objects.create(name="testjob")
    Job.objects.create(name="testjob")
    Job.objects.bulk_create([Job(name="testjob"), Job(name="testjob")])

    assert Job.objects.count() == 4


@pytest.mark.django_db
def test_bulk_create__makes_one_job_per_free_key_and_leaves_the_duplicates_out():
    held = Job.objects.create(name="testjob", unique_key="a")
    jobs = [
        Job(name="testjob", unique_key="a"),
        Job(name="testjob", unique_key="b"),
        Job(name="testjob", unique_key="b"),
        Job(name="testjob"),
        Job(name="testjob", unique_key="c"),
    ]

    created = Job.objects.bulk_create(jobs)

    assert created == [jobs[1], jobs[3], jobs[4]]
    assert set(Job.objects.exclude(pk=held.pk).values_list("unique_key", flat=True)) == {
        "b",
        "c",
        None,
    }
    assert jobs[0]._state.adding and jobs[2]._state.adding
    assert not jobs[1]._state.adding
    assert JobEvent.objects.count() == 4


@pytest.mark.django_db
def test_bulk_create__sends_one_statement_per_batch(django_assert_num_queries):
    jobs = [Job(name="testjob", unique_key=f"k{n}") for n in range(10)]

    # A transaction around the batches (two queries) and one statement per
    # batch, pipelined: one executemany of three.
    with django_assert_num_queries(2 + 1) as queries:
        created = Job.objects.bulk_create(jobs, batch_size=4)

    assert len(created) == 10
    assert "dbq_create_unique_jobs_v1" in queries[1]["sql"] and "3 times" in queries[1]["sql"]


@pytest.mark.django_db
def test_replace__updates_the_waiting_job_and_returns_it():
    later = timezone.now() + timedelta(minutes=5)
    first = Job.objects.create(name="testjob", unique_key="debounce", workspace={"n": 1})

    got = Job.objects.create(
        name="testjob",
        unique_key="debounce",
        workspace={"n": 2},
        run_after=later,
        priority=5,
        on_duplicate="replace",
    )

    assert got.pk == first.pk
    assert (got.workspace, got.run_after, got.priority) == ({"n": 2}, later, 5)
    assert Job.objects.count() == 1
    kinds = list(JobEvent.objects.filter(job_id=first.pk).values_list("kind", "payload"))
    assert kinds[-1] == (
        "updated",
        {"workspace": {"n": 2}, "run_after": later.isoformat(), "priority": 5},
    )


@pytest.mark.django_db
def test_replace__of_a_running_job_raises_and_changes_nothing():
    running = Job.objects.create(name="testjob", unique_key="r", state=Job.STATES.PROCESSING)

    with pytest.raises(DuplicateJobError, match="running") as raised:
        Job.objects.create(name="testjob", unique_key="r", on_duplicate="replace")

    assert raised.value.job == running
    assert JobEvent.objects.count() == 1


@pytest.mark.django_db
def test_bulk_replace__takes_the_last_duplicate_of_each_key():
    first = Job.objects.create(name="testjob", unique_key="a", workspace={"n": 0})

    created = Job.objects.bulk_create(
        [
            Job(name="testjob", unique_key="a", workspace={"n": 1}),
            Job(name="testjob", unique_key="a", workspace={"n": 2}),
            Job(name="testjob", unique_key="b", workspace={"n": 3}),
            Job(name="testjob", unique_key="b", workspace={"n": 4}),
        ],
        on_duplicate="replace",
    )

    first.refresh_from_db()
    assert first.workspace == {"n": 2}
    (b,) = created
    b.refresh_from_db()
    # Created by the first of its key, then replaced by the last.
    assert b.workspace == {"n": 4}
    assert list(JobEvent.objects.filter(job_id=b.pk).values_list("kind", flat=True)) == [
        "created",
        "updated",
    ]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("key", "fix"),
    [(42, "must be a string"), ("", "1 to 200"), ("x" * 201, "1 to 200"), ("a\x00b", "NUL")],
)
def test_a_bad_key__is_refused_with_the_fix_and_nothing_is_written(key, fix):
    with pytest.raises(InvalidJobError, match=fix):
        Job.objects.create(name="testjob", unique_key=key)
    with pytest.raises(InvalidJobError, match=fix):
        Job.objects.bulk_create(
            [Job(name="testjob", unique_key="fine"), Job(name="testjob", unique_key=key)]
        )

    assert JobEvent.objects.count() == 0


@pytest.mark.django_db
def test_a_bad_on_duplicate__is_refused():
    with pytest.raises(InvalidJobError, match="'raise'"):
        Job.objects.create(name="testjob", unique_key="k", on_duplicate="ignore")
    with pytest.raises(InvalidJobError, match="'skip'"):
        Job.objects.bulk_create([Job(name="testjob", unique_key="k")], on_duplicate="raise")

    assert JobEvent.objects.count() == 0


@pytest.mark.django_db
def test_the_database__refuses_a_second_waiting_job_with_the_key_whoever_writes_it():
    Job.objects.create(name="testjob", unique_key="k")
    payload = orjson.dumps({"name": "testjob", "unique_key": "k"}).decode()

    # The tables' owner's raw INSERT, past every function.
    with pytest.raises(IntegrityError, match="django_dbq_job_unique_key"), connection.cursor() as c:
        c.execute(
            "INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)"
            " VALUES (gen_random_uuid(), 1, 'created', %s::jsonb)",
            [payload],
        )


@pytest.mark.django_db
def test_the_create_functions_without_keys__refuse_a_payload_with_one():
    payload = orjson.dumps(
        [
            {
                "job_id": "00000000-0000-0000-0000-000000000001",
                "payload": {"name": "testjob", "unique_key": "k"},
            }
        ]
    ).decode()
    with pytest.raises(Exception, match="may not set unique_key"), connection.cursor() as cursor:
        cursor.execute("SELECT * FROM dbq_create_jobs_v2(%s::jsonb)", [payload])


@pytest.mark.django_db
def test_requeue__of_a_job_whose_key_another_job_took__fails_with_the_reason():
    first = Job.objects.create(name="testjob", unique_key="k")
    first.cancel()
    Job.objects.create(name="testjob", unique_key="k")

    with pytest.raises(DuplicateJobError, match=r"requeue .*\(unique_key\)=\(k\)"):
        first.requeue()

    first.refresh_from_db()
    assert first.state == Job.STATES.CANCELLED


@pytest.mark.django_db
def test_replay__rebuilds_the_keys():
    Job.objects.create(name="testjob", unique_key="a")
    Job.objects.bulk_create([Job(name="testjob", unique_key="b"), Job(name="testjob")])
    Job.objects.create(name="testjob", unique_key="a", priority=3, on_duplicate="replace")

    assert verify_projection().ok


@pytest.mark.django_db
def test_save__that_brings_back_a_held_key__fails_with_the_reason():
    first = Job.objects.create(name="testjob", unique_key="k", state=Job.STATES.FAILED)
    Job.objects.create(name="testjob", unique_key="k")
    first.state = Job.STATES.READY

    with pytest.raises(DuplicateJobError, match="save"):
        first.save()

    assert Job.objects.get(pk=first.pk).state == Job.STATES.FAILED


# A process that creates jobs with unique keys once the test says go: it prints
# "ready", waits for the go file, then prints one line per job it asked for.
CREATOR = """
import os, sys, time, django
django.setup()
from django.db import connection
from django_dbq.exceptions import DuplicateJobError
from django_dbq.models import Job
connection.ensure_connection()
go, keys = sys.argv[1], sys.argv[2].split(",")
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
if len(keys) == 1:
    try:
        print("created", Job.objects.create(name="testjob", unique_key=keys[0]).pk)
    except DuplicateJobError as error:
        print("duplicate", error.job.pk)
else:
    for job in Job.objects.bulk_create([Job(name="testjob", unique_key=k) for k in keys]):
        print("created", job.pk)
"""


def run_creators(count, keys, tmp_path):
    go = tmp_path / "go"
    env = {
        **os.environ,
        "DATABASE_URL": with_database(os.environ["DATABASE_URL"], connection.settings_dict["NAME"]),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CREATOR, str(go), ",".join(keys)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    try:
        for process in processes:
            assert process.stdout.readline().strip() == "ready", process.stderr.read()[-2000:]
        go.touch()
        outputs = []
        for process in processes:
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0, err[-2000:]
            outputs.append(out.split("\n"))
        return [line.split() for lines in outputs for line in lines if line]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


@pytest.mark.django_db(transaction=True)
def test_sixteen_processes_creating_one_key_at_once__make_one_job(tmp_path):
    lines = run_creators(16, ["invoice-42"], tmp_path)

    created = [pk for kind, pk in lines if kind == "created"]
    duplicates = [pk for kind, pk in lines if kind == "duplicate"]
    assert len(created) == 1 and len(duplicates) == 15
    assert set(duplicates) == set(created)
    assert list(Job.objects.values_list("unique_key", flat=True)) == ["invoice-42"]
    assert JobEvent.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_sixteen_processes_bulk_creating_the_same_keys_at_once__make_one_job_per_key(tmp_path):
    keys = [f"k{n}" for n in range(50)]

    lines = run_creators(16, keys, tmp_path)

    assert len(lines) == 50
    assert sorted(Job.objects.values_list("unique_key", flat=True)) == sorted(keys)
    assert verify_projection().ok


@pytest.mark.django_db
def test_the_admin__finds_a_job_by_its_key_and_shows_it(admin_client):
    from django.urls import reverse

    job = Job.objects.create(name="testjob", unique_key="invoice-42")
    Job.objects.create(name="testjob", unique_key="invoice-420")

    found = admin_client.get(reverse("admin:django_dbq_job_changelist"), {"q": "invoice-42"})
    page = admin_client.get(reverse("admin:django_dbq_job_change", args=[job.pk]))

    assert list(found.context["cl"].result_list) == [job]
    assert b"invoice-42" in page.content


@pytest.mark.django_db
def test_job_history__shows_the_key_on_the_created_event():
    from io import StringIO

    from django.core.management import call_command

    job = Job.objects.create(name="testjob", unique_key="invoice-42")
    out = StringIO()

    call_command("job_history", str(job.pk), stdout=out)

    assert "created (unique key 'invoice-42')" in out.getvalue()


@pytest.fixture(scope="module")
def roles_db():
    from tests import scratch_roles as rv

    db = rv.create("uq")
    yield db
    rv.drop(db)


REPLACE = (
    "from django_dbq.models import Job\n"
    "Job.objects.create(name='testjob', unique_key='k', priority=9, on_duplicate='replace')\n"
    "print(Job.objects.get(unique_key='k').priority)"
)


def test_the_worker_role__creates_unique_jobs_but_cannot_replace_one(roles_db):
    made = roles_db.manage(
        "worker",
        "shell",
        "-c",
        "from django_dbq.models import Job; Job.objects.create(name='testjob', unique_key='k')",
    )
    assert made.returncode == 0, made.stderr[-2000:]

    by_worker = roles_db.manage("worker", "shell", "-c", REPLACE)
    by_app = roles_db.manage("app", "shell", "-c", REPLACE)

    assert by_worker.returncode != 0 and "permission denied" in by_worker.stderr
    assert by_app.returncode == 0 and by_app.stdout.split()[-1] == "9", by_app.stderr[-2000:]


SLOW_INSERTS = """
CREATE FUNCTION pg_temp.slow_row() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN PERFORM pg_sleep(0.3); RETURN NEW; END $$;
CREATE TRIGGER slow_row BEFORE INSERT ON django_dbq_job FOR EACH ROW EXECUTE FUNCTION pg_temp.slow_row();
"""


@pytest.mark.django_db(transaction=True)
def test_two_calls_creating_the_same_keys_in_opposite_orders__both_finish():
    import threading

    from django.db import connections

    # Each row of the projection takes 0.3 s to insert, so that both statements
    # hold their first key while they ask for their second: a deadlock, which
    # PostgreSQL breaks by stopping one statement.
    with connection.cursor() as cursor:
        cursor.execute(SLOW_INSERTS.replace("pg_temp.", "public."))
    outcomes = {}

    def create(keys):
        try:
            made = Job.objects.bulk_create([Job(name="testjob", unique_key=k) for k in keys])
            outcomes[tuple(keys)] = [job.unique_key for job in made]
        except Exception as error:
            outcomes[tuple(keys)] = error
        finally:
            connections.close_all()

    try:
        threads = [
            threading.Thread(target=create, args=(keys,)) for keys in (["a", "b"], ["b", "a"])
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                "DROP TRIGGER slow_row ON django_dbq_job; DROP FUNCTION public.slow_row()"
            )

    assert not any(isinstance(o, Exception) for o in outcomes.values()), outcomes
    assert sorted(Job.objects.values_list("unique_key", flat=True)) == ["a", "b"]
    assert sorted(key for made in outcomes.values() for key in made) == ["a", "b"]
