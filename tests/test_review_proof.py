"""The review of the tamper-evident ledger: each attack a helper tried, as a test.

The ones that broke the first version (seals over transaction-id windows) are
kept here with what holds now; the owner's tampering with the triggers off must
each make replay_events --verify exit 1.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import psycopg
import pytest
from django.core.management import CommandError
from django.db import DatabaseError, connection
from django.utils import timezone

from django_dbq.events.append import delete_old_jobs
from django_dbq.models import Job, Retired, Seal
from django_dbq.seals import seal_ledger, verify_proof
from tests import scratch_roles as rv
from tests.test_migration_0011 import migrate
from tests.test_proof import KEY, forge, keyed, run_jobs, verify

pytestmark = pytest.mark.django_db(transaction=True)


def other_connection(**kwargs):
    params = {k: v for k, v in connection.get_connection_params().items() if k != "context"}
    return psycopg.connect(**params, **kwargs)


@keyed
def test_a_seal_with_a_wrong_mac__does_not_blind_verify_to_later_tampering():
    # A role that may seal (worker, maintenance) signs a seal with anything.
    run_jobs(1)
    with other_connection() as sealer:
        (sid,) = sealer.execute("SELECT id FROM dbq_prepare_seal_v1(1000)").fetchone()
        sealer.execute("SELECT dbq_sign_seal_v1(%s, %s)", [sid, b"\0" * 32])
    doomed = run_jobs(1)[0]
    assert seal_ledger().id == 2
    forge("DELETE FROM django_dbq_jobevent WHERE job_id = %s", [doomed.id])
    forge("DELETE FROM django_dbq_job WHERE id = %s", [doomed.id])

    code, _, err = verify()
    assert code == 1
    assert "seal 1 is not signed" in err
    assert "tampered: seal 2 " in err and "events were removed" in err


@keyed
def test_an_unsigned_seal_or_retirement_record__cannot_be_committed():
    run_jobs(1)
    with other_connection(autocommit=True) as sealer:
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="not signed"):
            sealer.execute("SELECT id FROM dbq_prepare_seal_v1(1000)")
    assert not Seal.objects.exists()


@keyed
def test_a_session_holding_the_seal_lock__does_not_stall_the_workers():
    run_jobs(1)
    with other_connection() as holder:
        holder.execute("SELECT * FROM dbq_prepare_seal_v1(1000)")  # left open
        started = time.monotonic()
        with pytest.raises(DatabaseError, match="lock timeout"):
            seal_ledger(wait_ms=200)
        assert time.monotonic() - started < 2
        holder.rollback()
    assert seal_ledger().id == 1


@keyed
def test_retention_and_sealing__refuse_a_repeatable_read_transaction():
    run_jobs(1)
    seal_ledger()
    with other_connection() as maintenance:
        maintenance.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with pytest.raises(psycopg.errors.InvalidTransactionState, match="READ COMMITTED"):
            maintenance.execute("SELECT dbq_delete_old_jobs_v4(now() + interval '1 hour')")
        maintenance.rollback()
        with pytest.raises(psycopg.errors.InvalidTransactionState, match="READ COMMITTED"):
            maintenance.execute("SELECT * FROM dbq_prepare_seal_v1(1000)")
    assert Job.objects.count() == 1


@keyed
def test_retention_while_a_seal_is_taken__records_every_sealed_event_it_removes():
    run_jobs(1)
    with other_connection() as sealer:
        from django_dbq.seals import _mac, seal_message

        row = sealer.execute(
            "SELECT id, sealed_at, after_event_id, last_event_id, events, total_events, digest,"
            " prev_mac FROM dbq_prepare_seal_v1(1000)"
        ).fetchone()
        sealer.execute(
            "SELECT dbq_sign_seal_v1(%s, %s)", [row[0], _mac(KEY.encode(), seal_message(*row))]
        )
        result = {}

        def retention():
            try:
                result["deleted"] = delete_old_jobs(timezone.now() + timedelta(hours=1))
            finally:
                connection.close()

        thread = threading.Thread(target=retention)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # waits for the seal's transaction
        sealer.commit()
        thread.join()
    assert result["deleted"] == 1
    assert Retired.objects.get().events == 3
    assert verify_proof().ok


@pytest.fixture
def at_0016(monkeypatch):
    monkeypatch.setenv("DBQ_TEST_LEDGER_KEY", KEY)
    db = rv.create("rv17")
    migrate(db, "django_dbq", "0016_create_jobs_v3")
    yield db
    rv.drop(db)


def test_sealing_before_0018_is_done__is_refused_then_covers_every_event(at_0016):
    with at_0016.connect("app") as app:
        app.execute('SELECT dbq_create_job_v2(gen_random_uuid(), \'{"name": "testjob"}\')')
    migrate(at_0016, "django_dbq", "0017_ledger_proof")
    with at_0016.connect("app") as app:
        app.execute('SELECT dbq_create_job_v2(gen_random_uuid(), \'{"name": "testjob"}\')')
    refused = at_0016.manage("maintenance", "seal_ledger")
    assert refused.returncode != 0
    assert "events of the ledger have no hash yet" in refused.stderr
    migrate(at_0016)
    sealed = at_0016.manage("maintenance", "seal_ledger")
    assert "sealed 1: 2 events" in sealed.stdout, sealed.stderr[-2000:]
    verified = at_0016.manage("maintenance", "replay_events", "--verify")
    assert verified.returncode == 0, verified.stderr[-2000:]


# The owner's tampering with the triggers off; each must make verify exit 1.
TAMPERING = {
    "change_at": "UPDATE django_dbq_jobevent SET at = at - interval '1 hour'"
    " WHERE job_id = %(a)s AND version = 2",
    "swap_hashes_between_jobs": "UPDATE django_dbq_jobevent e SET hash = o.hash"
    " FROM django_dbq_jobevent o WHERE e.version = 1 AND o.version = 1"
    " AND ((e.job_id = %(a)s AND o.job_id = %(b)s) OR (e.job_id = %(b)s AND o.job_id = %(a)s))",
    "reorder_versions": "UPDATE django_dbq_jobevent SET version = 1000"
    " WHERE job_id = %(a)s AND version = 2;"
    " UPDATE django_dbq_jobevent SET version = 2 WHERE job_id = %(a)s AND version = 3;"
    " UPDATE django_dbq_jobevent SET version = 3 WHERE job_id = %(a)s AND version = 1000",
    "delete_history_of_job": "DELETE FROM django_dbq_jobevent WHERE job_id = %(a)s;"
    " DELETE FROM django_dbq_job WHERE id = %(a)s",
    "truncate_sealed_events": "DELETE FROM django_dbq_jobevent"
    " WHERE job_id = %(c)s AND version > 1;"
    " UPDATE django_dbq_job j SET version = 1, state = 'NEW', head = e.hash"
    " FROM django_dbq_jobevent e WHERE j.id = %(c)s AND e.job_id = j.id AND e.version = 1",
    "insert_chained_event_into_a_sealed_gap": "INSERT INTO django_dbq_jobevent"
    " (id, job_id, version, kind, payload, at, hash)"
    " SELECT (SELECT min(id) + 1 FROM django_dbq_jobevent), job_id, version + 1, 'updated',"
    " '{}', at, dbq_event_hash_v1(hash, job_id, version + 1, 'updated', '{}', at)"
    " FROM django_dbq_jobevent WHERE job_id = %(a)s ORDER BY version DESC LIMIT 1;"
    " UPDATE django_dbq_job j SET version = e.version, head = e.hash FROM django_dbq_jobevent e"
    " WHERE j.id = %(a)s AND e.job_id = j.id AND e.kind = 'updated'",
    "insert_chained_event_below_every_seal": "INSERT INTO django_dbq_jobevent"
    " (id, job_id, version, kind, payload, at, hash)"
    " SELECT -5, job_id, version + 1, 'updated', '{}', at,"
    " dbq_event_hash_v1(hash, job_id, version + 1, 'updated', '{}', at)"
    " FROM django_dbq_jobevent WHERE job_id = %(a)s ORDER BY version DESC LIMIT 1;"
    " UPDATE django_dbq_job j SET version = e.version, head = e.hash FROM django_dbq_jobevent e"
    " WHERE j.id = %(a)s AND e.job_id = j.id AND e.kind = 'updated'",
    "forged_retirement_record": "INSERT INTO django_dbq_retired"
    " (seal_id, retired_at, events, entries, txid, mac)"
    " SELECT 1, now(), count(*), string_agg(int8send(id) || hash, '' ORDER BY id), 1, '\\x00'"
    " FROM django_dbq_jobevent WHERE job_id = %(a)s;"
    " DELETE FROM django_dbq_jobevent WHERE job_id = %(a)s;"
    " DELETE FROM django_dbq_job WHERE id = %(a)s",
    "delete_middle_seal": "DELETE FROM django_dbq_seal WHERE id = 1",
    "change_sealed_at": "UPDATE django_dbq_seal SET sealed_at = sealed_at - interval '1 day'"
    " WHERE id = 1",
}


def _ledger():
    """Jobs a, b under seal 1, job c under seal 2 (a gap of ids in seal 1's range)."""
    a, b = run_jobs(2)
    with other_connection() as rolled_back:
        rolled_back.execute('SELECT dbq_create_job_v2(gen_random_uuid(), \'{"name": "testjob"}\')')
        rolled_back.rollback()
    Job.objects.create(name="testjob", queue_name="elsewhere")
    assert seal_ledger().id == 1
    (c,) = run_jobs(1)
    assert seal_ledger().id == 2
    return a.id, b.id, c.id


@keyed
@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_owner_tampering__makes_verify_exit_1(how):
    a, b, c = _ledger()
    if how == "insert_chained_event_into_a_sealed_gap":
        # The id left by the rolled-back append, inside seal 1's range.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT g FROM generate_series(1, (SELECT last_event_id FROM django_dbq_seal"
                " WHERE id = 1)) g WHERE g NOT IN (SELECT id FROM django_dbq_jobevent) LIMIT 1"
            )
            (gap,) = cursor.fetchone()
        sql = TAMPERING[how].replace("(SELECT min(id) + 1 FROM django_dbq_jobevent)", str(gap))
    else:
        sql = TAMPERING[how]
    forge(sql, {"a": a, "b": b, "c": c})
    try:
        code, out, _ = verify()
    except CommandError:
        # The replay refuses the history before the proof is checked (reorder_versions).
        code, out = 1, ""
    assert code == 1, out


@keyed
def test_cutting_the_last_seal__is_seen_only_with_its_number_and_digest_kept():
    a, b, c = _ledger()
    kept = Seal.objects.get(id=2)
    forge("DELETE FROM django_dbq_seal WHERE id = 2")
    assert verify()[0] == 0  # documented: the last seals can be cut
    with pytest.raises(CommandError, match="there is no seal 2"):
        verify("--since", f"2:{bytes(kept.digest).hex()[:16]}")


@keyed
def test_seals_removed_and_taken_again__are_caught_by_the_digest_kept_elsewhere():
    job = Job.objects.create(name="testjob", priority=1, queue_name="elsewhere")  # not run
    seal_ledger()
    run_jobs(1)
    kept = seal_ledger()
    # The owner removes every seal and rewrites the job, chain and head recomputed...
    forge(
        "DELETE FROM django_dbq_seal;"
        " UPDATE django_dbq_jobevent SET payload = jsonb_set(payload, '{priority}', '9'),"
        " hash = dbq_event_hash_v1(NULL, job_id, 1, 'created',"
        " jsonb_set(payload, '{priority}', '9'), at)"
        " WHERE job_id = %(id)s AND version = 1;"
        " UPDATE django_dbq_job j SET priority = 9, head = e.hash FROM django_dbq_jobevent e"
        " WHERE j.id = %(id)s AND e.job_id = j.id AND e.version = 1",
        {"id": job.id},
    )
    # ...and the workers, honest and keyed, seal again.
    seal_ledger()
    assert seal_ledger() is None
    run_jobs(1)
    assert seal_ledger().id >= kept.id
    code, _, err = verify("--since", f"{kept.id}:{kept.digest.hex()[:16]}")
    assert code == 1
    assert f"seal {kept.id}'s digest is not the" in err


@keyed
def test_retention__keeps_a_job_whose_sealed_history_was_rewritten():
    (job,) = run_jobs(1)
    seal_ledger()
    forge(
        "UPDATE django_dbq_jobevent SET payload = payload || '{\"forged\": true}'"
        " WHERE job_id = %s AND version = 2",
        [job.id],
    )
    assert delete_old_jobs(timezone.now() + timedelta(hours=1)) == 0
    assert Job.objects.filter(id=job.id).exists()
    assert not verify_proof().ok


@pytest.fixture
def roles_db(monkeypatch):
    monkeypatch.setenv("DBQ_TEST_LEDGER_KEY", KEY)
    db = rv.create("rvroles")
    yield db
    rv.drop(db)


def _refused(conn, sql, params=None):
    try:
        conn.execute(sql, params)
    except psycopg.Error as exc:
        return type(exc).__name__
    return None


def test_roles__cannot_steer_the_seal_functions(roles_db):
    with roles_db.connect("app") as app:
        rv.create_job(app, state="COMPLETE")
    for kind in ("app", "none"):
        with roles_db.connect(kind) as conn:
            assert _refused(conn, "SELECT * FROM dbq_prepare_seal_v1(1000)") == (
                "InsufficientPrivilege"
            )
            assert _refused(conn, "SELECT dbq_sign_seal_v1(1, %s)", [b"\0" * 32]) == (
                "InsufficientPrivilege"
            )
            assert _refused(conn, "SELECT dbq_sign_retired_v1('{}', '{}')") == (
                "InsufficientPrivilege"
            )
    with roles_db.connect("worker") as worker:
        worker.execute("CREATE TEMP TABLE django_dbq_seal (LIKE dbq_app.django_dbq_seal)")
        assert _refused(worker, "SELECT * FROM dbq_prepare_seal_v1(0)") == "InvalidParameterValue"
        assert _refused(worker, "SELECT * FROM dbq_prepare_seal_v1(600000)") == (
            "InvalidParameterValue"
        )
        assert _refused(worker, "INSERT INTO dbq_app.django_dbq_seal SELECT * FROM django_dbq_seal")
        assert _refused(worker, "DELETE FROM dbq_app.django_dbq_seal")
        # Another transaction's seal cannot be signed.
        assert _refused(worker, "SELECT dbq_sign_seal_v1(1, %s)", [b"\0" * 32]) is None
    sealed = roles_db.manage("worker", "seal_ledger")
    assert "sealed 1: 1 events" in sealed.stdout, sealed.stderr[-2000:]


def test_maintenance_without_the_key__cannot_remove_sealed_jobs(roles_db):
    with roles_db.connect("app") as app:
        rv.create_job(app, state="COMPLETE")
    sealed = roles_db.manage("maintenance", "seal_ledger")
    assert "sealed 1" in sealed.stdout, sealed.stdout + sealed.stderr[-2000:]
    with roles_db.connect("maintenance") as maintenance:
        # The retention function straight from SQL: its record is unsigned at commit.
        assert _refused(
            maintenance, "SELECT dbq_delete_old_jobs_v4(now() + interval '1 hour')"
        ) == ("IntegrityConstraintViolation")
        assert maintenance.execute("SELECT count(*) FROM django_dbq_job").fetchone() == (1,)
        assert maintenance.execute("SELECT count(*) FROM django_dbq_retired").fetchone() == (0,)
    verified = roles_db.manage("maintenance", "replay_events", "--verify")
    assert verified.returncode == 0, verified.stderr[-2000:]


@keyed
def test_a_temp_table_in_the_verifiers_session__does_not_hide_tampering():
    a, b = run_jobs(2)
    seal_ledger()
    forge("DELETE FROM django_dbq_jobevent WHERE job_id = %s", [a.id])
    forge("DELETE FROM django_dbq_job WHERE id = %s", [a.id])
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE django_dbq_seal AS SELECT * FROM django_dbq_seal WHERE false"
        )
    try:
        assert not verify_proof().ok
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE pg_temp.django_dbq_seal")


@keyed
def test_two_sealers_and_appends_in_savepoints__every_event_sealed_once():
    errors = []

    def sealer():
        try:
            for _ in range(5):
                try:
                    seal_ledger(wait_ms=200)
                except DatabaseError as exc:
                    if getattr(exc.__cause__, "sqlstate", None) != "55P03":
                        raise
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    with other_connection() as long:
        long.execute('SELECT dbq_create_job_v2(gen_random_uuid(), \'{"name": "testjob"}\')')
        long.execute("SAVEPOINT s")
        long.execute('SELECT dbq_create_job_v2(gen_random_uuid(), \'{"name": "testjob"}\')')
        long.execute("ROLLBACK TO SAVEPOINT s")
        long.execute("SAVEPOINT t")
        long.execute('SELECT dbq_create_job_v2(gen_random_uuid(), \'{"name": "testjob"}\')')
        long.execute("RELEASE SAVEPOINT t")
        threads = [threading.Thread(target=sealer) for _ in range(2)]
        for thread in threads:
            thread.start()
        long.commit()
        run_jobs(3)
        for thread in threads:
            thread.join()
    seal_ledger()
    assert not errors, errors
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), (SELECT max(total_events) FROM django_dbq_seal)"
            " FROM django_dbq_jobevent"
        )
        events, total = cursor.fetchone()
    assert total == events
    proof = verify_proof()
    assert proof.ok, proof.problems
