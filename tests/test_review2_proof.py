"""Second review of the ledger's proof (seals over event-id ranges): each break found, as it holds now."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from django.db import DatabaseError, connection

from django_dbq.seals import seal_ledger, verify_proof
from tests.test_proof import keyed, run_jobs

pytestmark = pytest.mark.django_db(transaction=True)

CREATE = 'SELECT dbq_create_job_v2(gen_random_uuid(), \'{"name": "testjob"}\')'


def other_connection(**kwargs):
    params = {k: v for k, v in connection.get_connection_params().items() if k != "context"}
    return psycopg.connect(**params, **kwargs)


@keyed
def test_an_event_id_sequence_with_a_cache__is_refused_by_the_sealer():
    # Cached ids come out of order: a session's cached id could land below a
    # seal's last. The sealer refuses rather than cry tampering later.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_serial_sequence('django_dbq_jobevent', 'id')")
        (seq,) = cursor.fetchone()
        cursor.execute(f"ALTER SEQUENCE {seq} CACHE 20")
    try:
        with other_connection(autocommit=True) as a, other_connection(autocommit=True) as b:
            a.execute(CREATE)
            b.execute(CREATE)
            with pytest.raises(DatabaseError, match="caches ids") as refused:
                seal_ledger()
            assert "CACHE 1" in refused.value.__cause__.diag.message_hint
            a.execute(CREATE)
        assert verify_proof().ok
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER SEQUENCE {seq} CACHE 1")
    assert seal_ledger().events == 3


@keyed
def test_a_sealer_holds_every_append_off_for_at_most_200_ms():
    # README: "new appends wait that long [200 ms] behind the seal's lock".
    # prepare_seal (granted to the worker and maintenance roles) takes up to
    # 60,000 ms; the command waits 10,000 ms. With one appending transaction
    # open (a web request that enqueued), every other append waits it out.
    run_jobs(1)
    with other_connection() as request, other_connection() as sealer:
        request.execute(CREATE)  # left open

        def seal():
            try:
                sealer.execute("SELECT * FROM dbq_prepare_seal_v1(3000)")
            except psycopg.Error:
                pass
            sealer.rollback()

        thread = threading.Thread(target=seal)
        thread.start()
        time.sleep(0.3)
        with other_connection(autocommit=True) as enqueue:
            started = time.monotonic()
            enqueue.execute(CREATE)
            held = time.monotonic() - started
        thread.join()
        request.rollback()
    assert held < 1.0, f"an enqueue waited {held:.1f} s behind a sealer"


@keyed
def test_a_vacuum_of_the_ledger__does_not_keep_the_workers_from_sealing():
    # VACUUM, ANALYZE, autovacuum (and CREATE INDEX CONCURRENTLY) hold SHARE
    # UPDATE EXCLUSIVE on django_dbq_jobevent, which conflicts with the
    # sealer's SHARE lock: no append is in flight, yet every worker's seal
    # times out (and holds appends off meanwhile) for as long as it runs; an
    # anti-wraparound autovacuum of a large ledger is never cancelled.
    run_jobs(1)
    with other_connection() as vacuum:
        vacuum.execute("ANALYZE django_dbq_jobevent")  # in a transaction: held until its end
        try:
            sealed = seal_ledger(wait_ms=200)
        finally:
            vacuum.rollback()
    assert sealed is not None
