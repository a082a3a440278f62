"""Attacks on the ledger by roles below the owner, in a database a non-superuser owns.

Each test is an attack that once worked (see the README's threat model): forging
or skipping events through the trigger functions, shadowing tables with TEMP
ones, planting overloads and operators in the app's schema, raw writes of every
event kind, opening the guards with settings, and stretching or stealing leases.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

from django_dbq.events.claims import new_worker_key
from django_dbq.events.models import EventKind
from django_dbq.projections.scratch import VARIANTS, rename, scratch_sql
from django_dbq.roles import AUDIT_FUNCTIONS
from django_dbq.sqlfiles import read_sql
from tests.ownedb import SCHEMA, create_owned_database, drop_owned_database

BELOW_OWNER = ("worker", "app", "maintenance", "none", "creator")
SQL_FILES = [
    ("django_dbq.projections", "sql/apply.sql"),
    ("django_dbq.projections", "sql/replay.sql"),
    ("django_dbq.events", "sql/ledger.sql"),
    ("django_dbq.events", "sql/worker.sql"),
    ("django_dbq.events", "sql/operations.sql"),
    ("django_dbq.events", "sql/queues.sql"),
    ("django_dbq.events", "sql/unique.sql"),
    ("django_dbq.projections", "sql/queues.sql"),
    ("django_dbq.events", "sql/schedules.sql"),
    ("django_dbq.events", "sql/seals.sql"),
]
# The ledger's columns, in its order, for a table of one's own.
FAKE_EVENTS = (
    "CREATE TEMP TABLE fake (id bigint GENERATED ALWAYS AS IDENTITY, version integer,"
    " kind varchar(20), payload jsonb, at timestamptz DEFAULT clock_timestamp(), job_id uuid,"
    " hash bytea)"
)


@pytest.fixture(scope="module")
def owned():
    db = create_owned_database()
    yield db
    drop_owned_database(db)


@pytest.fixture
def owner(owned):
    with owned.connect("owner") as conn:
        yield conn


def counts(conn):
    return conn.execute(
        "SELECT (SELECT count(*) FROM dbq_app.django_dbq_job),"
        " (SELECT count(*) FROM dbq_app.django_dbq_jobevent)"
    ).fetchone()


def create_job(owner, state="NEW", queue="default", name="testjob"):
    job_id = uuid.uuid4()
    owner.execute(
        "SELECT dbq_create_job_v2(%s, %s)",
        [job_id, Jsonb({"name": name, "state": state, "queue_name": queue, "next_task": "t"})],
    )
    return job_id


def job_row(owner, job_id):
    return owner.execute(
        "SELECT state, version, claimed_by, lease_until FROM dbq_app.django_dbq_job WHERE id = %s",
        [job_id],
    ).fetchone()


def claim(conn, key, queue="default", lease=30.0, worker="w"):
    return conn.execute(
        "SELECT id, lease_until FROM dbq_claim_jobs_v4(%s, 10, %s, %s, 'h', 1, %s)",
        [queue, worker, key, lease],
    ).fetchall()


def refused(conn, statement, params=None, error=psycopg.errors.InsufficientPrivilege):
    with pytest.raises(error):
        conn.execute(statement, params)


def events(owner, job_id):
    rows = owner.execute(
        "SELECT kind FROM dbq_app.django_dbq_jobevent WHERE job_id = %s ORDER BY version", [job_id]
    )
    return [kind for (kind,) in rows]


# 1. The trigger functions and the apply function cannot be aimed at other rows.


@pytest.mark.parametrize("kind", BELOW_OWNER)
def test_trigger_function__cannot_be_attached_to_a_temp_table(owned, owner, kind):
    before = counts(owner)
    with owned.connect(kind) as conn:
        conn.execute(FAKE_EVENTS)
        for function in ("dbq_apply_events_v5", "dbq_protect_projection_v2"):
            refused(
                conn,
                "CREATE TRIGGER fake_apply AFTER INSERT ON fake REFERENCING NEW TABLE AS"
                f" new_events FOR EACH STATEMENT EXECUTE FUNCTION dbq_app.{function}()",
            )
        # A trigger function of its own that hands its rows to the apply function.
        conn.execute(
            "CREATE FUNCTION pg_temp.relay() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " PERFORM dbq_app.dbq_fold_events_v2(ARRAY(SELECT e::dbq_app.django_dbq_jobevent"
            " FROM new_events e)); INSERT INTO dbq_app.django_dbq_job SELECT r.* FROM new_events e,"
            " LATERAL dbq_app.dbq_job_row_v1(e.job_id, e.version, e.payload, e.at) r;"
            " RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE TRIGGER relay AFTER INSERT ON fake REFERENCING NEW TABLE AS new_events"
            " FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.relay()"
        )
        refused(
            conn,
            "INSERT INTO fake (job_id, version, kind, payload) VALUES"
            " (gen_random_uuid(), 1, 'created', '{\"name\": \"forged\"}')",
        )
    assert counts(owner) == before


def test_trigger_function__refuses_any_table_but_the_ledger_even_for_the_owner(owner):
    before = counts(owner)
    owner.execute(FAKE_EVENTS)
    owner.execute(
        "CREATE TRIGGER fake_apply AFTER INSERT ON fake REFERENCING NEW TABLE AS new_events"
        " FOR EACH STATEMENT EXECUTE FUNCTION dbq_app.dbq_apply_events_v5()"
    )
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="django_dbq_jobevent alone"):
        owner.execute(
            "INSERT INTO fake (job_id, version, kind, payload) VALUES"
            " (gen_random_uuid(), 1, 'created', '{\"name\": \"forged\"}')"
        )
    assert counts(owner) == before


# 2. No write right, and no setting that opens a guard.


@pytest.mark.parametrize("kind", BELOW_OWNER)
def test_raw_writes__of_every_event_kind_are_refused(owned, owner, kind):
    job_id = create_job(owner)
    before = counts(owner)
    with owned.connect(kind) as conn:
        conn.execute("SET dbq.retention = 'on'")
        conn.execute("SET dbq.applying = 'on'")
        conn.execute(
            "SET pgtrigger.ignore = '{pgtrigger_protect_projection_fb050,"
            "pgtrigger_protect_ledger_86f28,pgtrigger_apply_events_0dd6f}'"
        )
        for event_kind in EventKind.values:
            refused(
                conn,
                "INSERT INTO dbq_app.django_dbq_jobevent (job_id, version, kind, payload)"
                ' VALUES (%s, 2, %s, \'{"lease_until": "infinity"}\')',
                [job_id, event_kind],
            )
        for statement in (
            "UPDATE dbq_app.django_dbq_jobevent SET kind = 'completed'",
            "DELETE FROM dbq_app.django_dbq_jobevent",
            "TRUNCATE dbq_app.django_dbq_jobevent",
            "UPDATE dbq_app.django_dbq_job SET state = 'COMPLETE'",
            "INSERT INTO dbq_app.django_dbq_job (id, name) VALUES (gen_random_uuid(), 'x')",
            "DELETE FROM dbq_app.django_dbq_job",
            "TRUNCATE dbq_app.django_dbq_job",
            "SELECT setval('dbq_app.django_dbq_jobevent_id_seq', 1)",
            "INSERT INTO dbq_app.django_dbq_queueevent (queue_name, version, kind, payload)"
            " VALUES ('raw', 1, 'paused', '{}')",
            "UPDATE dbq_app.django_dbq_queueevent SET kind = 'resumed'",
            "DELETE FROM dbq_app.django_dbq_queueevent",
            "TRUNCATE dbq_app.django_dbq_queueevent",
            "INSERT INTO dbq_app.django_dbq_queue VALUES ('raw', true, '', '', '', now(), 1)",
            "UPDATE dbq_app.django_dbq_queue SET paused = false",
            "DELETE FROM dbq_app.django_dbq_queue",
            "TRUNCATE dbq_app.django_dbq_queue",
            "SELECT setval('dbq_app.django_dbq_queueevent_id_seq', 1)",
            "INSERT INTO dbq_app.django_dbq_schedule (name, since) VALUES ('raw', now())",
            "UPDATE dbq_app.django_dbq_schedule SET last_tick = 'infinity'",
            "DELETE FROM dbq_app.django_dbq_schedule",
            "TRUNCATE dbq_app.django_dbq_schedule",
        ):
            refused(conn, statement)
    assert counts(owner) == before


def test_guard__a_role_granted_delete_by_mistake_still_cannot_delete_history(owned, owner):
    job_id = create_job(owner, state="COMPLETE")
    role = owned.roles["none"]
    owner.execute(f'GRANT DELETE, TRUNCATE ON dbq_app.django_dbq_jobevent TO "{role}"')
    try:
        with owned.connect("none") as conn:
            conn.execute("SET dbq.retention = 'on'")
            for statement in (
                "DELETE FROM dbq_app.django_dbq_jobevent",
                "TRUNCATE dbq_app.django_dbq_jobevent",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                    conn.execute(statement)
    finally:
        # ledger_grants takes such a right away again.
        regrant = owned.manage("owner", "ledger_grants", "--execute", "--app", owned.roles["app"])
        assert regrant.returncode == 0, regrant.stderr
    assert events(owner, job_id) == ["created"]
    assert not owner.execute(
        "SELECT has_table_privilege(%s, 'dbq_app.django_dbq_jobevent', 'DELETE')", [role]
    ).fetchone()[0]


def test_guard__a_role_granted_writes_on_the_projection_by_mistake_still_cannot_write_it(
    owned, owner
):
    job_id = create_job(owner, state="COMPLETE")
    role = owned.roles["none"]
    owner.execute(f'GRANT INSERT, UPDATE, DELETE, TRUNCATE ON dbq_app.django_dbq_job TO "{role}"')
    try:
        with owned.connect("none") as conn:
            conn.execute("SET dbq.applying = 'on'")
            for statement in (
                "UPDATE dbq_app.django_dbq_job SET state = 'READY'",
                "DELETE FROM dbq_app.django_dbq_job",
                "TRUNCATE dbq_app.django_dbq_job",
                "INSERT INTO dbq_app.django_dbq_job (id) VALUES (gen_random_uuid())",
            ):
                with pytest.raises(
                    psycopg.errors.InsufficientPrivilege, match="projection of the job ledger"
                ):
                    conn.execute(statement)
    finally:
        regrant = owned.manage("owner", "ledger_grants", "--execute", "--app", owned.roles["app"])
        assert regrant.returncode == 0, regrant.stderr
    assert job_row(owner, job_id)[0] == "COMPLETE"


# 3. Each role appends only what its functions allow.

# dbq_create_jobs_v3 of one good job and the payload given, which a second job uses.
CREATE_V3_ONE = (
    "SELECT * FROM dbq_create_jobs_v3(ARRAY[gen_random_uuid(), gen_random_uuid()], "
    'jsonb_build_array(\'{"name": "testjob"}\'::jsonb, %s::jsonb), ARRAY[0, 1])'
)


@pytest.mark.parametrize(
    ("job_ids", "payloads", "which"),
    [
        # one payload number short, one too many, out of range, negative, NULL
        ("ARRAY[gen_random_uuid(), gen_random_uuid()]", '\'[{"name": "testjob"}]\'', "ARRAY[0]"),
        ("ARRAY[gen_random_uuid()]", '\'[{"name": "testjob"}]\'', "ARRAY[0, 0]"),
        ("ARRAY[gen_random_uuid()]", '\'[{"name": "testjob"}]\'', "ARRAY[1]"),
        ("ARRAY[gen_random_uuid()]", '\'[{"name": "testjob"}]\'', "ARRAY[-1]"),
        ("ARRAY[gen_random_uuid()]", '\'[{"name": "testjob"}]\'', "ARRAY[NULL::integer]"),
        ("ARRAY[gen_random_uuid()]", '\'{"name": "testjob"}\'', "ARRAY[0]"),
        ("NULL", '\'[{"name": "testjob"}]\'', "ARRAY[0]"),
        ("ARRAY[[gen_random_uuid()]]", '\'[{"name": "testjob"}]\'', "ARRAY[[0]]"),
    ],
)
def test_app__create_jobs_v3_refuses_ids_and_payload_numbers_that_do_not_match(
    owned, owner, job_ids, payloads, which
):
    before = counts(owner)
    with owned.connect("app") as conn:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="as many job ids"):
            conn.execute(f"SELECT * FROM dbq_create_jobs_v3({job_ids}, {payloads}, {which})")
    assert counts(owner) == before


def test_app__create_jobs_v3_checks_a_payload_no_job_uses_and_refuses_a_null_id(owned, owner):
    before = counts(owner)
    with owned.connect("app") as conn:
        with pytest.raises(psycopg.DatabaseError, match="may not set attempts"):
            conn.execute(
                "SELECT * FROM dbq_create_jobs_v3(ARRAY[gen_random_uuid()], "
                '\'[{"name": "testjob"}, {"name": "testjob", "attempts": 9}]\', '
                "ARRAY[0])"
            )
        with pytest.raises(psycopg.errors.NotNullViolation):
            conn.execute(
                "SELECT * FROM dbq_create_jobs_v3(ARRAY[NULL::uuid], "
                '\'[{"name": "testjob"}]\', ARRAY[0])'
            )
    assert counts(owner) == before
    with owned.connect("worker") as conn:
        created = conn.execute(
            "SELECT * FROM dbq_create_jobs_v3(ARRAY[gen_random_uuid(), gen_random_uuid()], "
            '\'[{"name": "testjob"}]\', ARRAY[0, 0])'
        ).fetchall()
    assert len(created) == 2
    with owned.connect("none") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "SELECT * FROM dbq_create_jobs_v3(ARRAY[gen_random_uuid()], "
                '\'[{"name": "testjob"}]\', ARRAY[0])'
            )


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"name": "testjob", "state": "CANCELLED"}, "cannot be created in state"),
        ({"name": "testjob", "state": "LOST"}, "cannot be created in state"),
        ({"name": "testjob", "attempts": 99}, "may not set attempts"),
        ({"name": "testjob", "imported": True, "created": "2001-01-01"}, "may not set"),
        (["not", "an", "object"], "must be a JSON object"),
    ],
)
def test_app__creates_only_new_jobs_in_states_a_creation_allows(owned, owner, payload, message):
    before = counts(owner)
    with owned.connect("app") as conn:
        for statement in (
            "SELECT dbq_create_job_v2(gen_random_uuid(), %s)",
            "SELECT * FROM dbq_create_jobs_v2(jsonb_build_array("
            "jsonb_build_object('job_id', gen_random_uuid(), 'payload', %s::jsonb)))",
            CREATE_V3_ONE,
        ):
            with pytest.raises(psycopg.DatabaseError, match=message):
                conn.execute(statement, [Jsonb(payload)])
    assert counts(owner) == before


def test_app__a_job_it_creates_processing_is_held_by_no_worker_until_expiry_frees_it(owned, owner):
    job_id = uuid.uuid4()
    payload = {"name": "testjob", "state": "PROCESSING", "queue_name": "orphans"}
    with owned.connect("app") as conn:
        conn.execute("SELECT dbq_create_job_v2(%s, %s)", [job_id, Jsonb(payload)])
    assert job_row(owner, job_id) == ("PROCESSING", 1, None, None)
    key = new_worker_key()
    save = (
        "SELECT * FROM dbq_save_held_v2(%s, jsonb_build_array(jsonb_build_object("
        "'job_id', %s::uuid, 'kind', 'updated', 'payload', '{\"priority\": 1}'::jsonb)))"
    )
    with owned.connect("worker") as conn:
        # No worker's key proves a claim of it, and no claim takes it.
        assert conn.execute(save, [key, job_id]).fetchall() == []
        assert claim(conn, key, queue="orphans") == []
        expired = conn.execute("SELECT * FROM dbq_expire_leases_v4('w', 100, '{}')").fetchall()
    assert (job_id, "lease_expired") in expired
    assert job_row(owner, job_id)[:2] == ("READY", 2)
    assert events(owner, job_id) == ["created", "lease_expired"]


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("claimed", {"worker": "w", "lease_until": "infinity"}),
        ("completed", {}),
        ("requeued", {}),
        ("updated", {"lease_until": "infinity"}),
        ("updated", {"claimed_by": "w"}),
        ("updated", {"state": "PROCESSING"}),
        ("updated", {"created": 5}),
        ("updated", {"created": "yesterday"}),
        ("updated", {"created": "2001-01-01T00:00:00+00:00", "attempts": 0}),
    ],
)
def test_app__saves_only_the_fields_of_a_job(owned, owner, kind, payload):
    job_id = create_job(owner)
    with owned.connect("app") as conn:
        with pytest.raises(psycopg.DatabaseError):
            conn.execute(
                "SELECT * FROM dbq_update_jobs_v2(jsonb_build_array(jsonb_build_object("
                "'job_id', %s::uuid, 'kind', %s::text, 'payload', %s::jsonb)))",
                [job_id, kind, Jsonb(payload)],
            )
        conn.execute(
            "SELECT * FROM dbq_update_jobs_v2(jsonb_build_array(jsonb_build_object("
            "'job_id', %s::uuid, 'kind', 'updated', 'payload', '{\"priority\": 5}'::jsonb)))",
            [job_id],
        )
    assert events(owner, job_id) == ["created", "updated"]


def test_app__cannot_claim_record_outcomes_or_delete(owned, owner):
    job_id = create_job(owner, state="COMPLETE")
    with owned.connect("app") as conn:
        refused(
            conn, "SELECT * FROM dbq_claim_jobs_v2('default', 1, 'w', %s, 'h', 1, 30)", ["k" * 64]
        )
        refused(conn, "SELECT * FROM dbq_record_outcomes_v1(%s, '[]')", ["k" * 64])
        refused(conn, "SELECT dbq_delete_old_jobs_v3(now())")
        refused(conn, "SELECT dbq_replay_events_v5()")
    assert events(owner, job_id) == ["created"]


@pytest.mark.parametrize("kind", ["claimed", "lease_renewed", "created", "requeued", "updated"])
def test_worker__records_only_outcome_kinds(owned, owner, kind):
    job_id = create_job(owner, queue="outcomes")
    key = new_worker_key()
    with owned.connect("worker") as conn:
        assert [row[0] for row in claim(conn, key, queue="outcomes")] == [job_id]
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="a worker records"):
            conn.execute(
                "SELECT * FROM dbq_record_outcomes_v1(%s, jsonb_build_array(jsonb_build_object("
                "'job_id', %s::uuid, 'kind', %s::text, 'payload', "
                '\'{"lease_until": "infinity", "state": "NEW"}\'::jsonb)))',
                [key, job_id, kind],
            )
    assert events(owner, job_id) == ["created", "claimed"]


def test_worker__cannot_record_for_or_renew_a_job_another_worker_holds(owned, owner):
    job_id = create_job(owner, queue="stolen")
    holder, thief = new_worker_key(), new_worker_key()
    with owned.connect("worker") as conn:
        claim(conn, holder, queue="stolen", worker="holder")
        (lease_key,) = owner.execute(
            "SELECT lease_key FROM dbq_app.django_dbq_job WHERE id = %s", [job_id]
        ).fetchone()
        for key in (thief, lease_key):  # the hash that anyone may read is not the key
            recorded = conn.execute(
                "SELECT * FROM dbq_record_outcomes_v1(%s, jsonb_build_array(jsonb_build_object("
                "'job_id', %s::uuid, 'kind', 'completed', 'payload', '{\"worker\": \"holder\"}'"
                "::jsonb)))",
                [key, job_id],
            ).fetchall()
            renewed = conn.execute(
                "SELECT * FROM dbq_renew_leases_v2(%s, %s, 3600)", [key, [job_id]]
            ).fetchall()
            assert (recorded, renewed) == ([], [])
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="at least 32"):
            claim(conn, "short")
    assert events(owner, job_id) == ["created", "claimed"]


def test_worker__lease_is_computed_by_the_server_and_capped(owned, owner):
    create_job(owner, queue="lease")
    with owned.connect("worker") as conn:
        ((job_id, lease_until),) = claim(conn, new_worker_key(), queue="lease", lease=1e12)
        now = conn.execute("SELECT extract(epoch FROM now())::float8").fetchone()[0]
    assert 3590 < lease_until - now <= 3601
    assert job_row(owner, job_id)[3].timestamp() == pytest.approx(lease_until)


def test_worker__cannot_record_once_its_lease_ran_out(owned, owner):
    job_id = create_job(owner, queue="lapsed")
    key = new_worker_key()
    with owned.connect("worker") as conn:
        claim(conn, key, queue="lapsed", lease=1)
        time.sleep(1.1)
        recorded = conn.execute(
            "SELECT * FROM dbq_record_outcomes_v1(%s, jsonb_build_array(jsonb_build_object("
            "'job_id', %s::uuid, 'kind', 'completed', 'payload', '{}'::jsonb)))",
            [key, job_id],
        ).fetchall()
    assert recorded == []
    assert job_row(owner, job_id)[0] == "PROCESSING"


def test_worker__saves_only_the_job_it_holds(owned, owner):
    held, other = create_job(owner, queue="saves"), create_job(owner, queue="elsewhere")
    key = new_worker_key()
    save = (
        "SELECT * FROM dbq_save_held_v2(%s, jsonb_build_array(jsonb_build_object("
        "'job_id', %s::uuid, 'kind', 'updated', 'payload', '{\"workspace\": {\"p\": 1}}'::jsonb)))"
    )
    with owned.connect("worker") as conn:
        claim(conn, key, queue="saves")
        assert [row[0] for row in conn.execute(save, [key, held]).fetchall()] == [held]
        assert conn.execute(save, [key, other]).fetchall() == []
        assert conn.execute(save, [new_worker_key(), held]).fetchall() == []
        refused(conn, "SELECT * FROM dbq_update_jobs_v2('[]')")
    assert events(owner, held) == ["created", "claimed", "updated"]
    assert events(owner, other) == ["created"]


def test_worker__saves_what_hooks_changed_only_in_a_job_it_failed_itself(owned, owner):
    failed, done = create_job(owner, queue="hooks"), create_job(owner, queue="hooks")
    key = new_worker_key()
    save = (
        "SELECT job_id FROM dbq_save_failed_v1(%s, jsonb_build_array(jsonb_build_object("
        "'job_id', %s::uuid, 'payload', %s::jsonb)))"
    )
    workspace = Jsonb({"workspace": {"hook": 1}})
    with owned.connect("worker") as conn:
        claim(conn, key, queue="hooks")
        # Held, not failed: not this function's.
        assert conn.execute(save, [key, failed, workspace]).fetchall() == []
        conn.execute(
            "SELECT * FROM dbq_record_outcomes_v1(%s, jsonb_build_array("
            "jsonb_build_object('job_id', %s::uuid, 'kind', 'failed', 'payload', '{}'::jsonb),"
            "jsonb_build_object('job_id', %s::uuid, 'kind', 'completed', 'payload', '{}'::jsonb)))",
            [key, failed, done],
        )
        assert conn.execute(save, [new_worker_key(), failed, workspace]).fetchall() == []
        assert conn.execute(save, [key, done, workspace]).fetchall() == []
        with pytest.raises(psycopg.DatabaseError, match="not a change of state"):
            conn.execute(save, [key, failed, Jsonb({"state": "READY"})])
        with pytest.raises(psycopg.DatabaseError, match="may not set lease_key"):
            conn.execute(save, [key, failed, Jsonb({"lease_key": "x"})])
        assert conn.execute(save, [key, failed, workspace]).fetchall() == [(failed,)]
    assert events(owner, failed) == ["created", "claimed", "failed", "updated"]
    assert events(owner, done) == ["created", "claimed", "completed"]


def ticks(*entries):
    """The ticks argument of dbq_enqueue_ticks_v1: (tick, payload) pairs, a new job each."""
    return Jsonb([{"tick": t, "job_id": str(uuid.uuid4()), "payload": p} for t, p in entries])


ENQUEUE_TICKS = "SELECT job_id, tick FROM dbq_enqueue_ticks_v1(%s, %s)"


@pytest.mark.parametrize(
    ("entries", "error", "message"),
    [
        (
            [("{now}", {"name": "other", "next_task": "t"})],
            psycopg.errors.InsufficientPrivilege,
            "name",
        ),
        (
            [("{now}", {"name": "sched", "attempts": 9})],
            psycopg.DatabaseError,
            "may not set attempts",
        ),
        ([("{now}", {"name": "sched", "tick": "x"})], psycopg.DatabaseError, "may not set tick"),
        ([("{now}", {"name": "sched", "state": "CANCELLED"})], psycopg.DatabaseError, "state"),
        ([("2999-01-01T00:00:00+00:00", {"name": "sched"})], psycopg.DatabaseError, "not due yet"),
        (
            [("{now}", None), ("2001-01-01T00:00:00+00:00", None)],
            psycopg.DatabaseError,
            "ascending",
        ),
        ([("yesterday", None)], psycopg.errors.InvalidDatetimeFormat, "ISO 8601"),
        ([("2001-01-01T00:00:00", None)], psycopg.errors.InvalidDatetimeFormat, "ISO 8601"),
        ([("{now}", None)] * 101, psycopg.DatabaseError, "at most 100"),
    ],
)
def test_worker__enqueues_only_due_ticks_of_jobs_of_the_schedule(
    owned, owner, entries, error, message
):
    before = counts(owner)
    with owned.connect("worker") as conn:
        now = conn.execute("SELECT now()").fetchone()[0].isoformat()
        bad = [(t.format(now=now), p) for t, p in entries]
        with pytest.raises(error, match=message):
            conn.execute(ENQUEUE_TICKS, ["sched", ticks(*bad)])
    assert counts(owner) == before


def test_worker__enqueues_each_tick_once_and_the_app_may_not_at_all(owned, owner):
    name = f"sched-{uuid.uuid4().hex[:8]}"
    with owned.connect("worker") as conn:
        assert conn.execute(ENQUEUE_TICKS, [name, Jsonb([])]).fetchall() == []
        # Seen now for the first time: a tick before is not enqueued.
        early = ticks(("2001-01-01T00:00:00+00:00", {"name": name}))
        assert conn.execute(ENQUEUE_TICKS, [name, early]).fetchall() == []
        now = conn.execute("SELECT now()").fetchone()[0]
        due = ticks((now.isoformat(), {"name": name, "next_task": "t", "queue_name": "ticks"}))
        ((job_id, tick),) = conn.execute(ENQUEUE_TICKS, [name, due]).fetchall()
        again = ticks((now.isoformat(), {"name": name, "next_task": "t", "queue_name": "ticks"}))
        assert conn.execute(ENQUEUE_TICKS, [name, again]).fetchall() == []
    assert tick == now
    assert events(owner, job_id) == ["created"]
    payload = owner.execute(
        "SELECT payload FROM dbq_app.django_dbq_jobevent WHERE job_id = %s", [job_id]
    ).fetchone()[0]
    assert payload["tick"] == now.isoformat()
    before = counts(owner)
    for kind in ("app", "maintenance", "none"):
        with owned.connect(kind) as conn:
            refused(conn, ENQUEUE_TICKS, [name, ticks((now.isoformat(), {"name": name}))])
    assert counts(owner) == before
    assert owner.execute(
        "SELECT last_tick, last_job_id FROM dbq_app.django_dbq_schedule WHERE name = %s", [name]
    ).fetchone() == (now, job_id)


@pytest.mark.parametrize(
    "run_after", ["13/01/2030 00:00", "now", "2030-01-01 00:00", "2030-01-01T00:00:00", "tomorrow"]
)
def test_times__only_iso_8601_with_an_offset_so_that_replay_reads_them_the_same(
    owned, owner, run_after
):
    job_id = create_job(owner, queue="times")
    key = new_worker_key()
    bad = Jsonb({"name": "testjob", "run_after": run_after})
    with owned.connect("app") as conn:
        conn.execute("SET DateStyle = 'ISO, DMY'")
        for statement in (
            "SELECT dbq_create_job_v2(gen_random_uuid(), %s)",
            "SELECT * FROM dbq_create_jobs_v2(jsonb_build_array("
            "jsonb_build_object('job_id', gen_random_uuid(), 'payload', %s::jsonb)))",
            CREATE_V3_ONE,
        ):
            with pytest.raises(psycopg.errors.InvalidDatetimeFormat, match="ISO 8601"):
                conn.execute(statement, [bad])
        with pytest.raises(psycopg.errors.InvalidDatetimeFormat):
            conn.execute(
                "SELECT * FROM dbq_update_jobs_v2(jsonb_build_array(jsonb_build_object("
                "'job_id', %s::uuid, 'kind', 'updated', 'payload', jsonb_build_object("
                "'run_after', %s::text))))",
                [job_id, run_after],
            )
        conn.execute(
            "SELECT dbq_create_job_v2(gen_random_uuid(), %s)",
            [Jsonb({"name": "testjob", "run_after": "2030-01-13T00:00:00.5+05:30"})],
        )
    with owned.connect("worker") as conn:
        claim(conn, key, queue="times")
        with pytest.raises(psycopg.errors.InvalidDatetimeFormat):
            conn.execute(
                "SELECT * FROM dbq_record_outcomes_v1(%s, jsonb_build_array(jsonb_build_object("
                "'job_id', %s::uuid, 'kind', 'retried', 'payload', jsonb_build_object("
                "'run_after', %s::text))))",
                [key, job_id, run_after],
            )
    assert events(owner, job_id) == ["created", "claimed"]


# 4. TEMP tables do not shadow the real ones.


def test_temp_shadow_tables__do_not_steer_retention(owned, owner):
    waiting = create_job(owner)
    with owned.connect("maintenance") as conn:
        conn.execute("CREATE TEMP TABLE django_dbq_job AS SELECT * FROM dbq_app.django_dbq_job")
        conn.execute(
            "CREATE TEMP TABLE django_dbq_jobevent AS SELECT * FROM dbq_app.django_dbq_jobevent"
        )
        conn.execute("UPDATE pg_temp.django_dbq_job SET state = 'COMPLETE', created = '2000-01-01'")
        conn.execute("SET search_path = pg_temp, dbq_app")
        conn.execute("SELECT dbq_app.dbq_delete_old_jobs_v3(now() - interval '1 day')")
    assert job_row(owner, waiting)[0] == "NEW"
    assert events(owner, waiting) == ["created"]


def test_temp_shadow_tables__do_not_steer_the_workers_functions(owned, owner):
    job_id = create_job(owner, queue="shadow")
    key = new_worker_key()
    with owned.connect("worker") as conn:
        conn.execute("CREATE TEMP TABLE django_dbq_job AS SELECT * FROM dbq_app.django_dbq_job")
        # In the copy the job is held by this worker's key; in truth nobody holds it.
        conn.execute(
            "UPDATE pg_temp.django_dbq_job SET state = 'PROCESSING', lease_until = 'infinity',"
            " lease_key = encode(sha256(convert_to(%s, 'UTF8')), 'hex') WHERE id = %s",
            [key, job_id],
        )
        conn.execute("SET search_path = pg_temp, dbq_app")
        recorded = conn.execute(
            "SELECT * FROM dbq_app.dbq_record_outcomes_v1(%s, jsonb_build_array("
            "jsonb_build_object('job_id', %s::uuid, 'kind', 'completed', 'payload', '{}'::jsonb)))",
            [key, job_id],
        ).fetchall()
    assert recorded == []
    assert events(owner, job_id) == ["created"]


# 5. Overloads and operators planted in the app's schema are never used.


def planted_function(name, args, returns):
    """A function of the creator's that fails loudly wherever it is called."""
    return (
        f"CREATE FUNCTION dbq_app.{name}({args}) RETURNS {returns} LANGUAGE plpgsql AS $$"
        " BEGIN RAISE EXCEPTION 'planted code ran as %', current_user; END $$"
    )


VC = "character varying"
PLANTED = [
    # Overloads that are a closer match wherever a varchar argument is passed uncast.
    *(
        planted_function(
            "dbq_event_is_illegal_v2",
            f"{kind}, integer, jsonb, boolean, {state}, integer, boolean",
            "boolean",
        )
        for kind, state in ((VC, "text"), ("text", VC), (VC, VC))
    ),
    *(
        planted_function("dbq_next_state_v2", f"{kind}, {state}, jsonb, boolean", "text")
        for kind, state in ((VC, "text"), ("text", VC), (VC, VC))
    ),
    # Operators for comparisons of the varchar columns, which pg_catalog lacks.
    planted_function("planted_eq", f"{VC}, {VC}", "boolean"),
    f"CREATE OPERATOR dbq_app.= (LEFTARG = {VC}, RIGHTARG = {VC}, FUNCTION = dbq_app.planted_eq)",
    planted_function("planted_eq_text", f"{VC}, text", "boolean"),
    f"CREATE OPERATOR dbq_app.= (LEFTARG = {VC}, RIGHTARG = text, FUNCTION = dbq_app.planted_eq_text)",
]


@pytest.fixture
def planted(owned):
    with owned.connect("creator") as conn:
        for statement in PLANTED:
            conn.execute(statement)
    yield
    with owned.connect("creator") as conn:
        conn.execute(f'DROP OWNED BY "{owned.roles["creator"]}"')


def test_schema_creator__cannot_make_the_functions_run_its_code(owned, owner, planted):
    finished = create_job(owner, state="COMPLETE", queue="planted")
    waiting = create_job(owner, queue="planted")
    with owned.connect("app") as conn:
        with pytest.raises(psycopg.errors.CheckViolation, match="illegal transition"):
            conn.execute(
                "SELECT * FROM dbq_update_jobs_v2(jsonb_build_array(jsonb_build_object("
                "'job_id', %s::uuid, 'kind', 'updated', 'payload', '{\"state\": \"PROCESSING\"}'"
                "::jsonb)))",
                [finished],
            )
        # A legal save goes through the fold's UPDATE and its state machine.
        conn.execute(
            "SELECT * FROM dbq_update_jobs_v2(jsonb_build_array(jsonb_build_object("
            "'job_id', %s::uuid, 'kind', 'updated', 'payload', '{\"priority\": 5}'::jsonb)))",
            [waiting],
        )
        conn.execute("SELECT * FROM dbq_cancel_jobs_v2(ARRAY[%s]::uuid[], 'x')", [finished])
        conn.execute('SELECT dbq_create_job_v2(gen_random_uuid(), \'{"name": "t"}\')')
    key = new_worker_key()
    with owned.connect("worker") as conn:
        assert [row[0] for row in claim(conn, key, queue="planted")] == [waiting]
        conn.execute(
            "SELECT * FROM dbq_record_and_claim_v3(%s, jsonb_build_array(jsonb_build_object("
            "'job_id', %s::uuid, 'kind', 'completed', 'payload', '{}'::jsonb)),"
            " 'planted', 10, 'w', 'h', 1, 30)",
            [key, waiting],
        )
        conn.execute("SELECT * FROM dbq_expire_leases_v4('w', 10, '{}')")
    # The owner's own rebuild, in a session whose search_path is the app's schema,
    # and the audit reads' rebuild into a TEMP table, by the owner and the app.
    with owned.connect("owner") as conn, conn.transaction(force_rollback=True):
        conn.execute("SELECT dbq_replay_events_v5()")
    for kind in ("owner", "app"):
        with owned.connect(kind) as conn, conn.transaction(force_rollback=True):
            conn.execute("CREATE TEMP TABLE dbq_scratch_job (LIKE dbq_app.django_dbq_job)")
            conn.execute("SELECT dbq_replay_events_scratch_v5()")
    assert job_row(owner, finished)[0] == "COMPLETE"
    assert job_row(owner, waiting)[0] == "COMPLETE"


# Overloads of the functions the Python side calls, each a closer match for an
# argument sent as a small integer or as a string of unknown type.
PLANTED_ENTRY_POINTS = [
    planted_function(
        "dbq_record_and_claim_v3",
        "text, jsonb, text, smallint, text, text, integer, float8, text[]",
        "void",
    ),
    planted_function(
        "dbq_record_and_claim_v3",
        "text, jsonb, text, integer, text, text, smallint, float8, text[]",
        "void",
    ),
    planted_function(
        "dbq_claim_jobs_v4", "text, smallint, text, text, text, integer, float8, text[]", "void"
    ),
    planted_function("dbq_pause_queue_v1", f"{VC}, text, text", "void"),
    planted_function("dbq_expire_leases_v4", "text, smallint, text", "void"),
    planted_function("dbq_replay_events_v5", "text, text, integer", "bigint"),
    planted_function("dbq_replay_events_v5", "text, text, bigint", "bigint"),
    planted_function("dbq_delete_old_jobs_v3", "text", "bigint"),
    planted_function("dbq_cancel_jobs_v2", f"uuid[], {VC}", "void"),
    planted_function("dbq_replay_events_scratch_v5", "text, text, bigint", "bigint"),
    planted_function("dbq_replay_copy_scratch_v5", "text, text, bigint", "bigint"),
    # Closer matches than pg_catalog's for the rows the audit reads aggregate and show.
    planted_function(
        "planted_step",
        "dbq_app.django_dbq_jobevent[], dbq_app.django_dbq_jobevent",
        "dbq_app.django_dbq_jobevent[]",
    ),
    "CREATE AGGREGATE dbq_app.array_agg(dbq_app.django_dbq_jobevent)"
    " (SFUNC = dbq_app.planted_step, STYPE = dbq_app.django_dbq_jobevent[])",
    planted_function("to_jsonb", "record", "jsonb"),
]


def test_schema_creator__cannot_hijack_the_calls_of_workers_app_or_owner(owned, owner):
    with owned.connect("creator") as conn:
        for statement in PLANTED_ENTRY_POINTS:
            conn.execute(statement)
    audit_job(owner)
    try:
        script = (
            "from django_dbq.models import Job;"
            "Job.objects.bulk_create([Job(name='testjob', queue_name='entry') for _ in range(3)]);"
            "Job.objects.create(name='saves', queue_name='entry');"
            "Job.objects.create(name='testjob', queue_name='gone').cancel('x');"
            "from django_dbq.queues import pause_queue, resume_queue;"
            "pause_queue('entry-paused', 'x'); resume_queue('entry-paused')"
        )
        app = owned.manage("app", "shell", "-c", script)
        worker = owned.manage("worker", "worker", "entry", "--burst")
        maintenance = owned.manage("maintenance", "delete_old_jobs", "--hours", "-1")
        verified = owned.manage("owner", "replay_events", "--verify")
        replayed = owned.manage("owner", "replay_events")
        audited = owned.manage("app", "shell", "-c", AUDIT_SCRIPT)
        for ran in (app, worker, maintenance, verified, replayed, audited):
            assert ran.returncode == 0, ran.stdout[-1000:] + ran.stderr[-2000:]
            assert "planted code ran" not in ran.stdout + ran.stderr
        assert "database_error" not in worker.stderr, worker.stderr[-2000:]
    finally:
        with owned.connect("creator") as conn:
            conn.execute(f'DROP OWNED BY "{owned.roles["creator"]}"')


def creators_named(owned):
    checked = owned.manage("owner", "check", "--database", "default")
    found = re.search(r"of the job tables: (.*?)\. Such a role", checked.stderr + checked.stdout)
    return found[1].split(", ") if found else []


def test_schema_creator__is_named_by_manage_py_check(owned, owner):
    assert creators_named(owned) == [owned.roles["creator"]]

    owner.execute("GRANT CREATE ON SCHEMA dbq_app TO PUBLIC, postgres")
    try:
        # PUBLIC is named; a superuser, who may do anything anyway, is not.
        assert creators_named(owned) == ["PUBLIC", owned.roles["creator"]]
    finally:
        owner.execute("REVOKE CREATE ON SCHEMA dbq_app FROM PUBLIC, postgres")


# 6. What is installed: one definition per function, none executable by PUBLIC.


def defined_functions():
    """Each function of the sql/ files, and each generated from them: name -> body, as now."""
    found = {}
    texts = [read_sql(package, path) for package, path in SQL_FILES] + [scratch_sql()]
    for text in texts:
        text = text.replace("@schema_literal@", f"'{SCHEMA}'")
        text = text.replace("@schema@", f'"{SCHEMA}"')
        for match in re.finditer(
            rf'CREATE OR REPLACE FUNCTION "{SCHEMA}"\.(\w+)\(.*?AS \$\$\n?(.*?)\$\$;', text, re.S
        ):
            found[match[1]] = match[2]
    return found


def test_installed_functions__are_those_of_the_sql_files_and_no_others(owner):
    installed = dict(
        owner.execute(
            "SELECT p.proname, p.prosrc FROM pg_proc p"
            " WHERE p.pronamespace = %s::regnamespace AND p.proname LIKE 'dbq\\_%%'",
            [SCHEMA],
        ).fetchall()
    )
    defined = defined_functions()

    assert sorted(installed) == sorted(defined), "superseded functions must be dropped"
    changed = [n for n in defined if installed[n].strip() != defined[n].strip()]
    assert changed == [], (
        f"{changed} differ from what the migrations installed; you probably need a new "
        "migration with a frozen copy of the changed sql/ file (and a _vN name), and, when "
        "apply.sql or replay.sql changed, one of django_dbq.projections.scratch.scratch_sql()"
    )


def test_definer_functions__are_granted_not_public_and_pin_search_path(owned, owner):
    rows = owner.execute(
        "SELECT p.proname, p.prosecdef, p.proconfig,"
        " has_function_privilege('public', p.oid, 'EXECUTE') AS public_may,"
        " ARRAY(SELECT r.rolname FROM pg_roles r WHERE r.rolname = ANY(%s)"
        "       AND has_function_privilege(r.oid, p.oid, 'EXECUTE') ORDER BY 1) AS granted"
        " FROM pg_proc p WHERE p.pronamespace = %s::regnamespace"
        " AND (p.proname LIKE 'dbq\\_%%' OR p.proname LIKE 'pgtrigger\\_%%') ORDER BY 1",
        [[owned.roles[k] for k in BELOW_OWNER], SCHEMA],
    ).fetchall()
    table = "\n".join(f"{r[0]:<28} definer={r[1]} {r[2]} public={r[3]} {r[4]}" for r in rows)
    role_of = {name: kind for kind, name in owned.roles.items()}
    definers = {name: sorted(role_of[g] for g in granted) for name, d, _, _, granted in rows if d}

    assert not any(r[3] for r in rows), f"executable by PUBLIC:\n{table}"
    pinned = [r[0] for r in rows if r[1] and "search_path=pg_catalog, pg_temp" in (r[2] or [])]
    assert pinned == [r[0] for r in rows if r[1]], (
        f"a SECURITY DEFINER function without search_path pg_catalog, pg_temp:\n{table}"
    )
    assert definers == {
        "dbq_apply_events_v5": [],
        "dbq_apply_queue_events_v1": [],
        "dbq_cancel_jobs_v2": ["app"],
        "dbq_claim_jobs_v2": ["worker"],
        "dbq_claim_jobs_v3": ["worker"],
        "dbq_claim_jobs_v4": ["worker"],
        "dbq_create_job_v1": ["app", "worker"],
        "dbq_create_job_v2": ["app", "worker"],
        "dbq_create_jobs_v1": ["app", "worker"],
        "dbq_create_jobs_v2": ["app", "worker"],
        "dbq_create_jobs_v3": ["app", "worker"],
        "dbq_create_unique_jobs_v1": ["app", "worker"],
        "dbq_delete_old_jobs_v3": ["maintenance"],
        "dbq_delete_old_jobs_v4": ["maintenance"],
        "dbq_delete_old_jobs_v5": ["maintenance"],
        "dbq_enqueue_ticks_v1": ["worker"],
        "dbq_expire_leases_v2": ["worker"],
        "dbq_expire_leases_v3": ["worker"],
        "dbq_expire_leases_v4": ["worker"],
        "dbq_pause_queue_v1": ["app"],
        "dbq_prepare_seal_v1": ["maintenance", "worker"],
        "dbq_record_and_claim_v1": ["worker"],
        "dbq_record_and_claim_v2": ["worker"],
        "dbq_record_and_claim_v3": ["worker"],
        "dbq_record_outcomes_v1": ["worker"],
        "dbq_release_jobs_v1": ["app"],
        "dbq_renew_leases_v2": ["worker"],
        "dbq_replace_unique_jobs_v1": ["app"],
        "dbq_requeue_jobs_v2": ["app"],
        "dbq_resume_queue_v1": ["app"],
        "dbq_save_failed_v1": ["worker"],
        "dbq_save_held_v1": ["worker"],
        "dbq_save_held_v2": ["worker"],
        "dbq_sign_seal_v1": ["maintenance", "worker"],
        "dbq_sign_retired_v1": ["maintenance"],
        "dbq_update_jobs_v1": ["app"],
        "dbq_update_jobs_v2": ["app"],
    }, table


def test_write_rights__belong_to_the_owner_alone(owned, owner):
    holders = owner.execute(
        "SELECT DISTINCT c.relname, a.privilege_type, a.grantee::regrole::text"
        " FROM pg_class c, aclexplode(c.relacl) a"
        " WHERE c.relnamespace = %s::regnamespace AND c.relname LIKE 'django_dbq\\_%%'"
        " AND a.grantee <> c.relowner AND a.privilege_type <> 'SELECT'",
        [SCHEMA],
    ).fetchall()

    assert holders == []


# 7. The app in a schema of its own, run by its roles end to end.


def test_schema_of_its_own__workers_and_app_run_jobs_with_their_roles(owned, owner):
    script = (
        "from django_dbq.models import Job;"
        "job = Job.objects.create(name='twotasks', queue_name='own', workspace={'a': 1});"
        "job.priority = 3; job.save();"
        "Job.objects.bulk_create([Job(name='twotasks', queue_name='own') for _ in range(600)])"
    )
    created = owned.manage("app", "shell", "-c", script)
    assert created.returncode == 0, created.stderr[-2000:]

    ran = owned.manage("worker", "worker", "own", "--burst")
    assert ran.returncode == 0, ran.stderr[-2000:]

    states = owner.execute(
        "SELECT state, count(*) FROM dbq_app.django_dbq_job WHERE queue_name = 'own' GROUP BY 1"
    ).fetchall()
    assert states == [("COMPLETE", 601)]
    verified = owned.manage("owner", "replay_events", "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    in_public = owner.execute(
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        " AND relname LIKE 'django_dbq%%'"
    ).fetchone()[0]
    assert in_public == 0


# 8. Audit reads by the roles: into a TEMP table of their own session, under MVCC.


def test_scratch_functions__are_the_live_ones_with_only_their_target_renamed(owner):
    def installed(name):
        return owner.execute(
            "SELECT p.prosrc, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid),"
            " p.provolatile, p.proparallel, p.prosecdef, p.proconfig, p.prolang"
            " FROM pg_proc p WHERE p.pronamespace = %s::regnamespace AND p.proname = %s",
            [SCHEMA, name],
        ).fetchone()

    for live, generated, copy, family in VARIANTS:
        live_source, *live_shape = installed(live)
        source, *shape = installed(generated)

        assert shape == live_shape, generated
        assert source == rename(live_source, copy=copy, schema=f'"{SCHEMA}"', family=family), (
            generated
        )
        changed = [
            renamed
            for line, renamed in zip(live_source.splitlines(), source.splitlines(), strict=True)
            if line != renamed
        ]
        assert changed, generated
        # Only lines that name the scratch table, the copy or a scratch function differ.
        for renamed in changed:
            assert re.search(
                r"pg_temp\.dbq_scratch_(job|queue)(event)?\b|_scratch_v\d\(", renamed
            ), renamed


def test_audit_functions__are_granted_to_worker_app_and_maintenance_not_public(owned, owner):
    rows = owner.execute(
        "SELECT p.oid::regprocedure::text, has_function_privilege('public', p.oid, 'EXECUTE'),"
        " ARRAY(SELECT r.rolname FROM pg_roles r WHERE r.rolname = ANY(%s)"
        "       AND has_function_privilege(r.oid, p.oid, 'EXECUTE') ORDER BY 1)"
        " FROM unnest(%s::regprocedure[]) AS p(oid)",
        [[owned.roles[k] for k in BELOW_OWNER], list(AUDIT_FUNCTIONS)],
    ).fetchall()
    role_of = {name: kind for kind, name in owned.roles.items()}

    assert {r[0].split("(")[0] for r in rows} >= {v.generated for v in VARIANTS}
    for signature, public, granted in rows:
        assert not public, signature
        assert sorted(role_of[g] for g in granted) == ["app", "maintenance", "worker"], signature
    with owned.connect("none") as conn:
        refused(conn, "SELECT dbq_replay_events_scratch_v5()")


AUDIT_SCRIPT = """
import json
from io import StringIO
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone
from django_dbq.models import Job
from django_dbq.projections.replay import verify_projection

now = timezone.now()
audit = Job.objects.filter(queue_name="audit")


def reads():
    out = StringIO()
    job = audit.first()
    call_command("job_history", str(job.id), "--as-of", now.isoformat(), stdout=out)
    return [
        verify_projection().drift_count,
        len(Job.objects.as_of(now)) == Job.objects.count(),
        [j.state for j in audit.as_of(now)],
        out.getvalue().splitlines()[-1].split()[3],
    ]


results = {"own": reads()}
with transaction.atomic():
    results["read committed"] = reads()
with transaction.atomic():
    connection.cursor().execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    results["repeatable read"] = reads()
print(json.dumps(results))
"""


def audit_job(owner):
    """The one job of the queue AUDIT_SCRIPT reads."""
    found = owner.execute("SELECT id FROM dbq_app.django_dbq_job WHERE queue_name = 'audit'")
    return (found.fetchone() or [None])[0] or create_job(owner, queue="audit")


def projection(owner):
    return owner.execute("SELECT * FROM dbq_app.django_dbq_job ORDER BY id").fetchall()


@pytest.mark.parametrize("kind", ["worker", "app", "maintenance"])
def test_audit_reads__as_of_and_verify_work_for_each_role_and_write_nothing(owned, owner, kind):
    audit_job(owner)
    drifting = create_job(owner, queue="audit-drift")
    with owner.transaction():
        owner.execute("SELECT set_config('dbq.applying', 'on', true)")
        owner.execute("UPDATE dbq_app.django_dbq_job SET priority = 9 WHERE id = %s", [drifting])
    before = projection(owner)
    try:
        ran = owned.manage(kind, "shell", "-c", AUDIT_SCRIPT)
        verified = owned.manage(kind, "replay_events", "--verify")
        after = projection(owner)
    finally:
        owner.execute("SELECT dbq_replay_events_v5()")

    assert ran.returncode == 0, ran.stderr[-3000:]
    results = json.loads(ran.stdout.splitlines()[-1])
    assert results == {
        mode: [1, True, ["NEW"], "state=NEW"]
        for mode in ("own", "read committed", "repeatable read")
    }
    assert verified.returncode == 1
    assert f"job {drifting}: priority: live=9 replayed=0" in verified.stderr
    assert after == before  # the drift is still there: the reads wrote nothing live
