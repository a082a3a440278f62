"""Least privilege: a worker, an application and a maintenance role, each with just its GRANTs."""

import os
import subprocess
import sys
import time
import uuid
from io import StringIO
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection

from django_dbq.models import Job, JobEvent
from django_dbq.projections.replay import verify_projection

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def roles():
    names = {kind: f"dbq_test_{kind}_{os.getpid()}" for kind in ("worker", "app", "maintenance")}
    with connection.cursor() as cursor:
        for name in names.values():
            cursor.execute(f'CREATE ROLE "{name}" LOGIN')  # test constants, not input
    call_command(
        "ledger_grants", "--execute", stdout=StringIO(), **{f"{k}": v for k, v in names.items()}
    )
    yield names
    with connection.cursor() as cursor:
        for name in names.values():
            cursor.execute(f'DROP OWNED BY "{name}"')
            cursor.execute(f'DROP ROLE "{name}"')


def url_as(role):
    settings = connection.settings_dict
    host = settings["HOST"]
    if host.startswith("/"):
        return f"postgres://{role}@/{settings['NAME']}?host={quote(host)}"
    return f"postgres://{role}@{host}:{settings['PORT'] or 5432}/{settings['NAME']}"


def connect_as(role):
    return psycopg.connect(url_as(role), autocommit=True)


def manage(role, *args):
    return subprocess.run(
        [sys.executable, "-m", "django", *args, "--settings=tests.settings"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url_as(role)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def refused(conn, statement, params=None):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement, params)


def test_worker_role__runs_jobs_with_no_write_right_on_the_projection(roles):
    jobs = Job.objects.bulk_create([Job(name="twotasks") for _ in range(20)])
    saving = Job.objects.create(name="saves")  # its task saves the job it runs

    ran = manage(roles["worker"], "worker", "--burst")

    assert ran.returncode == 0, ran.stderr[-2000:]
    assert Job.objects.filter(state=Job.STATES.COMPLETE).count() == len(jobs) + 1
    assert Job.objects.get(pk=saving.pk).workspace["progress"] == 50
    assert verify_projection().ok


def test_worker_role__cannot_rewrite_history_or_the_projection(roles):
    job = Job.objects.create(name="testjob")
    with connect_as(roles["worker"]) as conn:
        refused(conn, "UPDATE django_dbq_jobevent SET kind = 'completed'")
        refused(conn, "DELETE FROM django_dbq_jobevent")
        refused(conn, "TRUNCATE django_dbq_jobevent")
        refused(conn, "UPDATE django_dbq_job SET state = 'COMPLETE'")
        refused(conn, "DELETE FROM django_dbq_job")
        # Opening the projection's guard by hand does not give a right the role lacks.
        conn.execute("SET dbq.applying = 'on'")
        refused(conn, "UPDATE django_dbq_job SET state = 'COMPLETE'")
        conn.execute("SET pgtrigger.ignore = '{pgtrigger_protect_projection_fb050}'")
        refused(conn, "UPDATE django_dbq_job SET state = 'COMPLETE'")
        refused(conn, "SELECT dbq_delete_old_jobs_v3(now())")
        refused(conn, "SELECT dbq_replay_events_v5()")
        refused(conn, "SELECT dbq_fold_events_v2(ARRAY[]::django_dbq_jobevent[])")
        refused(conn, "SELECT * FROM dbq_update_jobs_v2('[]')")
        refused(conn, "SELECT * FROM dbq_cancel_jobs_v2(ARRAY[]::uuid[], '')")
    assert Job.objects.get(pk=job.pk).state == Job.STATES.NEW
    assert JobEvent.objects.count() == 1


def test_app_role__enqueues_and_saves_but_cannot_claim_or_delete(roles):
    script = (
        "from django_dbq.models import Job;"
        "job = Job.objects.create(name='testjob', workspace={'a': 1});"
        "job.priority = 3; job.save();"
        "Job.objects.bulk_create([Job(name='testjob') for _ in range(3)])"
    )
    shell = manage(roles["app"], "shell", "-c", script)

    assert shell.returncode == 0, shell.stderr[-2000:]
    assert Job.objects.count() == 4 and Job.objects.filter(priority=3).count() == 1
    with connect_as(roles["app"]) as conn:
        refused(
            conn, "SELECT * FROM dbq_claim_jobs_v3('default', 1, 'w', %s, 'h', 1, 30)", ["k" * 64]
        )
        refused(
            conn,
            "INSERT INTO django_dbq_jobevent (job_id, version, kind) VALUES (%s, 1, 'created')",
            [uuid.uuid4()],
        )
        refused(conn, "DELETE FROM django_dbq_jobevent")
        refused(conn, "UPDATE django_dbq_job SET priority = 9")
    assert manage(roles["app"], "delete_old_jobs", "--hours", "-1").returncode != 0
    assert verify_projection().ok


def test_maintenance_role__runs_delete_old_jobs_and_nothing_else(roles):
    Job.objects.create(name="testjob", state="COMPLETE")
    waiting = Job.objects.create(name="testjob")

    deleted = manage(roles["maintenance"], "delete_old_jobs", "--hours", "-1", "-v", "2")

    assert deleted.returncode == 0, deleted.stderr[-2000:]
    assert deleted.stdout.strip() == "Deleted old jobs (1)"
    assert list(Job.objects.values_list("id", flat=True)) == [waiting.id]
    with connect_as(roles["maintenance"]) as conn:
        refused(
            conn,
            "INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)"
            " VALUES (%s, 2, 'claimed', '{}')",
            [waiting.id],
        )
        refused(conn, "DELETE FROM django_dbq_jobevent")


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "inside an execute wrapper"])
def test_worker_key__never_appears_in_the_statement_text_other_sessions_read(roles, wrapped):
    """A heartbeat waiting on a row lock shows its statement in pg_stat_activity, not its key."""
    import threading
    from contextlib import nullcontext

    def passthrough(execute, sql, params, many, context):
        return execute(sql, params, many, context)

    from django_dbq.events.claims import claim_jobs, new_worker_key, renew_leases

    job = Job.objects.create(name="testjob")
    key = new_worker_key()
    claim_jobs("default", 1, "w", key, "h", 1, 30)
    params = {k: v for k, v in connection.get_connection_params().items() if k != "context"}
    with psycopg.connect(**params) as locker, psycopg.connect(**params, autocommit=True) as spy:
        locker.execute("SELECT 1 FROM django_dbq_job WHERE id = %s FOR UPDATE", [job.id])

        def heartbeat():
            try:
                with connection.execute_wrapper(passthrough) if wrapped else nullcontext():
                    renew_leases(key, [job.id], 30)
            finally:
                connection.close()

        thread = threading.Thread(target=heartbeat)
        thread.start()
        texts = []
        for _ in range(100):
            texts = [q for (q,) in spy.execute("SELECT query FROM pg_stat_activity")]
            if any("dbq_renew_leases_v2" in q for q in texts):
                break
            time.sleep(0.05)
        locker.rollback()
        thread.join(timeout=10)

    assert any("dbq_renew_leases_v2" in q for q in texts)
    assert not [q for q in texts if key in q]
