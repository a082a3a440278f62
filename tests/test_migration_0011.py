"""Migration 0011 forward, back to 0010 and forward again, with roles and jobs.

Every function's rights, SECURITY DEFINER and config are as they were after a
round trip, no function is PUBLIC's in any direction (the pgtrigger stub
included), and the way back is refused while the ledger holds saves of `created`
(the functions of 0010 would replay them otherwise)."""

from __future__ import annotations

import subprocess

import pytest

from tests import scratch_roles as rv

ACL = """
SELECT p.oid::regprocedure::text,
       COALESCE((SELECT array_agg(COALESCE(r.rolname, 'PUBLIC') || ':' || a.privilege_type ORDER BY 1)
                 FROM aclexplode(COALESCE(p.proacl, acldefault('f', p.proowner))) a
                 LEFT JOIN pg_roles r ON r.oid = a.grantee
                 WHERE a.grantee <> p.proowner), '{}'),
       md5(p.prosrc), p.prosecdef, p.proconfig
FROM pg_proc p WHERE p.pronamespace = 'dbq_app'::regnamespace ORDER BY 1
"""
PREVIOUS = "c055973"  # the release before this change
PUBLIC = """
SELECT p.oid::regprocedure::text FROM pg_proc p
WHERE p.pronamespace = 'dbq_app'::regnamespace AND has_function_privilege('public', p.oid, 'EXECUTE')
"""


@pytest.fixture
def at_0010():
    db = rv.create("mig", migrate_to="0010", grants=False)
    # What the previous release's `ledger_grants --execute` gave (its roles.py, at c055973).
    old = {}
    exec(
        subprocess.run(
            ["git", "show", f"{PREVIOUS}:django_dbq/roles.py"],
            cwd=rv.ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout,
        old,
    )
    with db.connect("owner") as owner:
        cursor = owner.cursor()
        roles = {k: db.roles[k] for k in ("worker", "app", "maintenance")}
        for statement in old["grant_statements"](
            roles["worker"], roles["app"], roles["maintenance"]
        ):
            cursor.execute(statement)
    yield db
    rv.drop(db)


def functions(db):
    with db.connect("owner") as owner:
        return {row[0]: row[1:] for row in owner.execute(ACL)}


def public(db):
    with db.connect("owner") as owner:
        return [row[0] for row in owner.execute(PUBLIC)]


def migrate(db, *target):
    done = db.manage("owner", "migrate", *target, "--verbosity", "0")
    assert done.returncode == 0, done.stderr[-2000:]


def test_0011_forward_back_forward__keeps_every_right_as_it_was(at_0010):
    before = functions(at_0010)
    migrate(at_0010)
    forward = functions(at_0010)
    assert public(at_0010) == []
    rv.ledger_grants(at_0010)
    assert functions(at_0010) == forward, "ledger_grants gives what the migration did not"
    migrate(at_0010, "django_dbq", "0010")
    assert public(at_0010) == []
    assert functions(at_0010) == before
    migrate(at_0010)
    assert functions(at_0010) == forward
    assert public(at_0010) == []


def replayed_created(owner, job_id):
    """What 0010's replay (dbq_replay_events_v4) makes of the job's `created`, rolled back."""
    with owner.transaction(force_rollback=True):
        owner.execute(
            "SELECT dbq_replay_events_v4(NULL::timestamptz, NULL::uuid[], 67108864::bigint)"
        )
        return owner.execute(
            "SELECT created FROM django_dbq_job WHERE id = %s", [job_id]
        ).fetchone()[0]


def test_back_to_0010__is_refused_while_the_ledger_holds_saves_of_created(at_0010):
    migrate(at_0010)
    rv.ledger_grants(at_0010)
    with at_0010.connect("app") as app:
        job = rv.create_job(app, state="COMPLETE")
        rv.save(app, job, created="2001-01-01T00:00:00+00:00")
    assert at_0010.manage("owner", "replay_events", "--verify").returncode == 0
    back = at_0010.manage("owner", "migrate", "django_dbq", "0010", "--verbosity", "0")
    # The functions of 0010 would replay the job with its enqueue time: refused.
    assert back.returncode != 0
    assert "cannot replay" in back.stderr and "Stay on 0011" in back.stderr, back.stderr[-2000:]
    # The migrations after 0011 were undone before 0011 refused: back to the latest.
    migrate(at_0010)
    assert at_0010.manage("owner", "replay_events", "--verify").returncode == 0


def test_default_privileges_of_the_owner_give_no_role_the_new_functions(at_0010):
    """Default privileges of the owner (ALTER DEFAULT PRIVILEGES ... GRANT EXECUTE ON FUNCTIONS)
    give no role the functions a migration creates: ledger_grants and grant_like decide."""
    with at_0010.connect("owner") as owner:
        owner.execute(
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA dbq_app GRANT EXECUTE ON FUNCTIONS"
            f' TO "{at_0010.roles["none"]}"'
        )
    migrate(at_0010)
    rv.ledger_grants(at_0010)
    with at_0010.connect("owner") as owner:
        leaked = [
            r[0]
            for r in owner.execute(
                "SELECT p.oid::regprocedure::text FROM pg_proc p"
                " WHERE p.pronamespace = 'dbq_app'::regnamespace AND p.prosecdef"
                " AND has_function_privilege(%s, p.oid, 'EXECUTE')",
                [at_0010.roles["none"]],
            )
        ]
    assert leaked == []
