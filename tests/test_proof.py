"""The ledger proves its history: hash chains per job, signed seals, verification.

Each tampering below is done the way a holder of the database could do it with
the triggers off (session_replication_role = replica, a superuser's setting),
and replay_events --verify must name it and exit 1.
"""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.test import override_settings
from django.utils import timezone

from django_dbq.models import Job, JobEvent, Retired, Seal
from django_dbq.seals import seal_ledger, verify_proof
from django_dbq.worker.loop import Worker

pytestmark = pytest.mark.django_db(transaction=True)

KEY = "a-test-ledger-key-of-32-bytes!!!"
keyed = override_settings(DBQ_LEDGER_KEY=KEY)


def forge(sql, params=None):
    """Run SQL with every trigger off, as a superuser may."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(sql, params)


def verify(*args):
    """replay_events --verify: (exit code, stdout, stderr)."""
    import io

    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("replay_events", "--verify", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue(), err.getvalue()


def run_jobs(count=3):
    jobs = Job.objects.bulk_create([Job(name="testjob") for _ in range(count)])
    Worker(burst=True, handle_signals=False).run()
    return jobs


def recomputed(event_id):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT dbq_event_hash_v1(p.hash, e.job_id, e.version, e.kind, e.payload, e.at)"
            " FROM django_dbq_jobevent e LEFT JOIN django_dbq_jobevent p"
            " ON p.job_id = e.job_id AND p.version = e.version - 1 WHERE e.id = %s",
            [event_id],
        )
        return bytes(cursor.fetchone()[0])


def test_every_append_path__chains_each_event_to_the_previous_one_of_its_job():
    one = Job.objects.create(name="testjob")
    bulk = Job.objects.bulk_create([Job(name="testjob"), Job(name="testjob", priority=3)])
    Worker(burst=True, handle_signals=False).run()  # claimed, completed: hashed in the INSERT
    later = Job.objects.create(name="testjob")
    later.priority = 7
    later.save()  # updated: hashed by the row trigger
    later.cancel()

    events = list(JobEvent.objects.order_by("id"))
    assert {e.kind for e in events} >= {"created", "claimed", "completed", "updated", "cancelled"}
    for event in events:
        assert event.hash is not None and bytes(event.hash) == recomputed(event.id)
    for job in (one, *bulk, later):
        last = JobEvent.objects.filter(job_id=job.pk).order_by("-version").first()
        with connection.cursor() as cursor:
            cursor.execute("SELECT head FROM django_dbq_job WHERE id = %s", [job.pk])
            assert bytes(cursor.fetchone()[0]) == bytes(last.hash)
    first = events[0]
    since_2000 = first.at - datetime(2000, 1, 1, tzinfo=UTC)
    micros = (since_2000.days * 86400 + since_2000.seconds) * 1_000_000 + since_2000.microseconds
    canonical = first.job_id.bytes + (1).to_bytes(4, "big") + micros.to_bytes(8, "big")
    with connection.cursor() as cursor:
        cursor.execute("SELECT payload::text FROM django_dbq_jobevent WHERE id = %s", [first.id])
        canonical += f"created {cursor.fetchone()[0]}".encode()
    assert bytes(first.hash) == hashlib.sha256(canonical).digest()
    assert verify_proof().ok


def test_an_event_appended_without_its_hash__gets_it_from_the_trigger():
    job = Job.objects.create(name="testjob")
    # The owner's raw INSERT, the way an import or an old function appends.
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)"
            " VALUES (%s, 2, 'cancelled', '{}') RETURNING id",
            [job.pk],
        )
        event_id = cursor.fetchone()[0]
    assert bytes(JobEvent.objects.get(id=event_id).hash) == recomputed(event_id)
    assert verify_proof().ok


@keyed
def test_seal__covers_every_committed_event_once_and_verifies():
    run_jobs(3)
    first = seal_ledger()
    assert first is not None and first.id == 1 and first.events == JobEvent.objects.count()
    assert seal_ledger() is None  # nothing new
    Job.objects.create(name="testjob")
    second = seal_ledger()
    assert second.id == 2 and second.events == 1
    assert second.total_events == JobEvent.objects.count()

    code, out, err = verify()
    assert code == 0, err
    assert "2 seals verify, the last is seal 2; 0 events since are not sealed yet" in out


@keyed
def test_seal__covers_what_committed_before_it_and_nothing_still_in_flight():
    Job.objects.create(name="testjob")
    params = {k: v for k, v in connection.get_connection_params().items() if k != "context"}
    with psycopg.connect(**params) as other:
        other.execute('SELECT dbq_create_job_v2(gen_random_uuid(), \'{"name": "testjob"}\')')
        sealing = threading.Thread(target=lambda: (seal_ledger(), connection.close()))
        sealing.start()
        sealing.join(0.5)
        assert sealing.is_alive()  # waits for the append in flight to end
        other.commit()
        sealing.join()
    sealed = Seal.objects.get()
    assert sealed.events == 2
    assert sealed.last_event_id == JobEvent.objects.order_by("-id").first().id
    Job.objects.create(name="testjob")
    assert seal_ledger().total_events == 3
    assert verify_proof().ok


@keyed
def test_verify__names_the_event_rewritten_with_the_triggers_off():
    run_jobs(2)
    seal_ledger()
    target = JobEvent.objects.filter(kind="completed").order_by("id").first()
    forge(
        "UPDATE django_dbq_jobevent SET payload = payload || '{\"forged\": true}' WHERE id = %s",
        [target.id],
    )

    code, _, err = verify()
    assert code == 1
    assert (
        f"tampered: job {target.job_id} event {target.version} (completed, id {target.id}) "
        "does not match its chain"
    ) in err


@keyed
def test_verify__names_the_seal_of_an_event_rewritten_with_its_hash_recomputed():
    run_jobs(2)
    seal_ledger()
    target = JobEvent.objects.filter(kind="completed").order_by("id").first()
    # A careful forger: the event, its hash and the job's head, all consistent.
    forge(
        "UPDATE django_dbq_jobevent e SET payload = e.payload || '{\"forged\": true}',"
        " hash = dbq_event_hash_v1(p.hash, e.job_id, e.version, e.kind,"
        " e.payload || '{\"forged\": true}', e.at)"
        " FROM django_dbq_jobevent p WHERE e.id = %s AND p.job_id = e.job_id"
        " AND p.version = e.version - 1",
        [target.id],
    )
    forge(
        "UPDATE django_dbq_job j SET head = e.hash FROM django_dbq_jobevent e"
        " WHERE e.id = %s AND j.id = e.job_id",
        [target.id],
    )
    assert "does not match its chain" not in " ".join(verify_proof().problems)

    code, _, err = verify()
    assert code == 1
    assert "tampered: seal 1 " in err and "one of them was rewritten" in err


@keyed
def test_verify__names_the_seal_of_a_job_removed_with_its_whole_history():
    jobs = run_jobs(3)
    seal_ledger()
    gone = jobs[1].pk
    removed = JobEvent.objects.filter(job_id=gone).count()
    forge("DELETE FROM django_dbq_jobevent WHERE job_id = %s", [gone])
    forge("DELETE FROM django_dbq_job WHERE id = %s", [gone])

    code, _, err = verify()
    assert code == 1
    assert f"of them are left: {removed} events were removed" in err


@keyed
def test_verify__finds_a_forged_or_removed_seal():
    run_jobs(1)
    seal_ledger()
    Job.objects.create(name="testjob")
    seal_ledger()
    Job.objects.create(name="testjob")
    seal_ledger()
    forge("UPDATE django_dbq_seal SET events = events + 1 WHERE id = 3")
    assert "seal 3 is not signed" in verify()[2]
    forge("UPDATE django_dbq_seal SET events = events - 1 WHERE id = 3")
    assert verify()[0] == 0
    forge("DELETE FROM django_dbq_seal WHERE id = 2")
    code, _, err = verify()
    assert code == 1 and "seal 3 is not signed" in err


@keyed
def test_verify_since__checks_only_after_the_trusted_seal():
    run_jobs(1)
    seal_ledger()
    early = JobEvent.objects.get(version=1)
    forge("UPDATE django_dbq_jobevent SET hash = sha256('forged') WHERE id = %s", [early.id])
    Job.objects.create(name="testjob")
    seal_ledger()

    code, _, err = verify()
    assert code == 1 and f"(created, id {early.id}) does not match its chain" in err
    code, out, err = verify("--since", "1")
    assert code == 0, err
    assert (
        "the hash chains of 1 events after seal 1 hold; 2 seals verify, the last is seal 2" in out
    )
    with pytest.raises(CommandError, match="there is no seal 9"):
        call_command("replay_events", "--verify", "--since", "9")


@keyed
def test_verify__refuses_seals_it_cannot_check_without_the_key():
    run_jobs(1)
    seal_ledger()
    with override_settings(DBQ_LEDGER_KEY=None):
        code, _, err = verify()
    assert code == 1 and "DBQ_LEDGER_KEY is not set" in err
    with override_settings(DBQ_LEDGER_KEY="another-key-of-32-bytes-long!!!!"):
        assert "seal 1 is not signed" in verify()[2]


@keyed
def test_retention__keeps_the_proof_of_what_it_removed():
    jobs = run_jobs(3)
    seal_ledger()
    old = timezone.now() - timedelta(days=30)
    for job in jobs[:2]:
        job.created = old
        job.save()
    seal_ledger()

    assert Job.objects.delete_old(hours=24) == 2
    assert set(Job.objects.values_list("pk", flat=True)) == {jobs[2].pk}
    records = list(Retired.objects.order_by("id"))
    assert [r.seal_id for r in records] == [1, 2]
    assert all(r.mac is not None for r in records)
    assert sum(r.events for r in records) == 2 * 4  # created, claimed, completed, updated
    code, out, err = verify()
    assert code == 0, err
    assert "2 seals verify" in out

    # A record a forger adds (no key) to pass a removal off as retention's fails.
    forge(
        "INSERT INTO django_dbq_retired (seal_id, retired_at, events, entries, txid)"
        " VALUES (1, now(), 0, '\\x', 0)"
    )
    assert "is not signed with DBQ_LEDGER_KEY" in verify()[2]


@keyed
def test_retention_of_sealed_jobs_without_the_key__removes_nothing():
    jobs = run_jobs(1)
    seal_ledger()
    jobs[0].created = timezone.now() - timedelta(days=30)
    jobs[0].save()
    with override_settings(DBQ_LEDGER_KEY=None), pytest.raises(ImproperlyConfigured) as raised:
        Job.objects.delete_old(hours=24)
    assert "Removing sealed jobs (retention) needs DBQ_LEDGER_KEY" in str(raised.value)
    assert Job.objects.count() == 1 and not Retired.objects.exists()
    with override_settings(DBQ_LEDGER_KEY=None):
        # The previous release's retention keeps sealed jobs.
        with connection.cursor() as cursor:
            cursor.execute("SELECT dbq_delete_old_jobs_v3(now())")
            assert cursor.fetchone()[0] == 0


def test_retention_without_seals__works_as_before():
    jobs = run_jobs(2)
    for job in jobs:
        job.created = timezone.now() - timedelta(days=30)
        job.save()
    assert Job.objects.delete_old(hours=24) == 2
    assert not Retired.objects.exists()


@keyed
def test_seal__is_signed_only_by_the_transaction_that_appends_it():
    run_jobs(1)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT id FROM dbq_prepare_seal_v1(1000)")
        (seal_id,) = cursor.fetchone()
        with pytest.raises(DatabaseError, match="an HMAC-SHA-256"):
            with transaction.atomic():
                cursor.execute("SELECT dbq_sign_seal_v1(%s, %s)", [seal_id, b"\0" * 31])
        cursor.execute("SELECT dbq_sign_seal_v1(%s, %s)", [seal_id, b"\0" * 32])
        assert cursor.fetchone()[0] is True
        cursor.execute("SELECT dbq_sign_seal_v1(%s, %s)", [seal_id, b"\1" * 32])
        assert cursor.fetchone()[0] is False  # signed once
    assert bytes(Seal.objects.get().mac) == b"\0" * 32
    with connection.cursor() as cursor:
        cursor.execute("SELECT dbq_sign_seal_v1(1, %s)", [b"\2" * 32])
        assert cursor.fetchone()[0] is False  # another transaction's seal
    assert "seal 1 is not signed" in verify()[2]


@keyed
def test_seal__waits_only_so_long_for_appends_in_flight():
    Job.objects.create(name="testjob")
    params = {k: v for k, v in connection.get_connection_params().items() if k != "context"}
    with psycopg.connect(**params) as other:
        other.execute('SELECT dbq_create_job_v2(gen_random_uuid(), \'{"name": "testjob"}\')')
        with pytest.raises(DatabaseError, match="outlasted the seal's wait of 100 ms"):
            seal_ledger(wait_ms=100)
        # The worker's seal gives up as quickly and leaves the queue working.
        assert Job.objects.create(name="testjob").pk
        other.commit()
    assert seal_ledger().events == 3


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE django_dbq_seal SET mac = digest",
        "DELETE FROM django_dbq_seal",
        "UPDATE django_dbq_retired SET mac = NULL",
        "DELETE FROM django_dbq_retired",
    ],
)
@keyed
def test_seals_and_retirement_records__are_never_changed_or_removed(sql):
    run_jobs(1)
    seal_ledger()
    with pytest.raises(DatabaseError, match="keeps the ledger's proof"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
    assert Seal.objects.count() == 1


@override_settings(DBQ_LEDGER_KEY=KEY, DBQ_SEAL_SECONDS=0.05)
def test_worker__seals_every_dbq_seal_seconds():
    Job.objects.bulk_create([Job(name="testjob") for _ in range(2)])
    worker = Worker(handle_signals=False)
    stopper = threading.Timer(1.5, lambda: setattr(worker, "alive", False))
    stopper.start()
    try:
        worker.run()
    finally:
        stopper.cancel()
    assert Seal.objects.exists()
    assert Job.objects.filter(state="COMPLETE").count() == 2
    assert verify_proof().ok


@override_settings(DBQ_LEDGER_KEY="short")
def test_a_short_key__is_refused_with_how_to_make_one():
    with pytest.raises(ImproperlyConfigured, match="at least 16 bytes.*secrets.token_hex"):
        seal_ledger()


@pytest.mark.parametrize(
    "overrides, code, text",
    [
        ({"DBQ_LEDGER_KEY": "short"}, "django_dbq.E017", "at least 16 bytes"),
        ({"DBQ_LEDGER_KEY": 12345678901234567890}, "django_dbq.E017", "text or bytes"),
        ({"DBQ_SEAL_SECONDS": "soon"}, "django_dbq.E018", "DBQ_SEAL_SECONDS is 'soon'"),
        ({"DBQ_SEAL_SECONDS": -1}, "django_dbq.E018", "DBQ_SEAL_SECONDS is -1"),
    ],
)
def test_check__refuses_a_bad_key_or_seal_interval(overrides, code, text):
    from django_dbq.checks import check_ledger_key

    with override_settings(**overrides):
        errors = check_ledger_key()
    assert [e.id for e in errors] == [code]
    assert text in errors[0].msg
    with override_settings(DBQ_LEDGER_KEY=KEY, DBQ_SEAL_SECONDS=30):
        assert check_ledger_key() == []


def test_migration_0018__hashes_an_older_ledger_and_events_appended_to_it_since(monkeypatch):
    import importlib
    from types import SimpleNamespace

    from django_dbq.projections.replay import verify_projection

    backfill = importlib.import_module("django_dbq.migrations.0018_hash_old_events")
    jobs = run_jobs(3)
    waiting = Job.objects.create(name="testjob")
    # The ledger as 0017 finds it: no hashes, no heads.
    forge("UPDATE django_dbq_jobevent SET hash = NULL")
    forge("UPDATE django_dbq_job SET head = NULL")
    # Appended after 0017, before 0018 reaches the job: the previous hash is
    # unknown, so the new event's is too (the trigger's path and the claim's).
    jobs[0].priority = 4
    jobs[0].save()
    Worker(burst=True, handle_signals=False).run()
    assert JobEvent.objects.filter(job_id=jobs[0].pk, version=4).get().hash is None
    assert JobEvent.objects.filter(job_id=waiting.pk, version=2).get().hash is None

    monkeypatch.setattr(backfill, "BATCH_JOBS", 2)
    backfill.hash_old_events(None, SimpleNamespace(connection=connection))

    assert not JobEvent.objects.filter(hash__isnull=True).exists()
    for event in JobEvent.objects.all():
        assert bytes(event.hash) == recomputed(event.id)
    assert verify_proof().ok and verify_projection().ok


@override_settings(DBQ_LEDGER_KEY=KEY, DBQ_SEAL_SECONDS=None)
def test_worker__keeps_draining_with_a_seal_interval_that_is_no_number(caplog):
    Job.objects.bulk_create([Job(name="testjob") for _ in range(2)])
    Worker(burst=True, handle_signals=False).run()
    assert Job.objects.filter(state="COMPLETE").count() == 2
    assert "event=seal_error" in caplog.text
    assert not Seal.objects.exists()


@keyed
def test_retention__signs_its_own_records_whatever_temp_table_the_session_holds():
    jobs = run_jobs(1)
    seal_ledger()
    jobs[0].created = timezone.now() - timedelta(days=30)
    jobs[0].save()
    with connection.cursor() as cursor:
        # Left in a pooled server session by another client: a record whose
        # mac the retention would otherwise compute and give to the real one.
        cursor.execute("CREATE TEMP TABLE django_dbq_retired (LIKE django_dbq_retired)")
        cursor.execute(
            "INSERT INTO pg_temp.django_dbq_retired VALUES"
            " (1, 1, now(), 99, '\\x00', pg_current_xact_id()::text::bigint, NULL)"
        )
    try:
        assert Job.objects.delete_old(hours=24) == 1
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE pg_temp.django_dbq_retired")
    assert verify_proof().ok


@keyed
def test_a_sealer_killed_before_it_signs__leaves_no_seal_and_the_next_covers_all():
    run_jobs(1)
    params = {k: v for k, v in connection.get_connection_params().items() if k != "context"}
    sealer = psycopg.connect(**params)
    sealer.execute("SELECT id FROM dbq_prepare_seal_v1(1000)")
    with connection.cursor() as cursor:
        # As kill -9 of the sealing process ends its session.
        cursor.execute("SELECT pg_terminate_backend(%s, 5000)", [sealer.info.backend_pid])
    sealer.close()
    assert not Seal.objects.exists()
    sealed = seal_ledger()
    assert sealed.id == 1 and sealed.events == JobEvent.objects.count()
    assert verify_proof().ok
