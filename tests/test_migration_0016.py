"""Migration 0016 (bulk_create's dbq_create_jobs_v3) back to 0015 and forward again, with roles.

The way back drops the function and leaves every other as it was, so the
previous release's bulk_create (dbq_create_jobs_v2) still runs; the way forward
grants it to the roles that may run dbq_create_jobs_v2, and to no one else.
"""

from __future__ import annotations

import pytest

from tests import scratch_roles as rv
from tests.test_migration_0011 import functions, migrate, public
from tests.test_migration_0017 import unchanged

NEW = "dbq_create_jobs_v3(uuid[],jsonb,integer[])"
OLD = "dbq_create_jobs_v2(jsonb)"
CREATE_TWO = (
    "SELECT count(*) FROM dbq_app.dbq_create_jobs_v2(jsonb_build_array("
    "jsonb_build_object('job_id', gen_random_uuid(), 'payload', '{\"name\": \"testjob\"}'::jsonb),"
    "jsonb_build_object('job_id', gen_random_uuid(), 'payload', '{\"name\": \"testjob\"}'::jsonb)))"
)


@pytest.fixture
def migrated():
    db = rv.create("m16")
    yield db
    rv.drop(db)


def grantees(listed):
    return sorted(entry.split(":")[0] for entry in listed[0])


def test_0016_back_and_forward__drops_the_function_and_grants_it_again_as_v2(migrated):
    latest = functions(migrated)
    assert grantees(latest[NEW]) == grantees(latest[OLD])
    assert sorted(grantees(latest[NEW])) == sorted(migrated.roles[k] for k in ("app", "worker"))

    migrate(migrated, "django_dbq", "0015_periodic_jobs")
    back = functions(migrated)
    assert unchanged(back) == unchanged({k: v for k, v in latest.items() if k != NEW})
    with migrated.connect("app") as app:
        assert app.execute(CREATE_TWO).fetchone() == (2,)

    migrate(migrated)
    assert functions(migrated) == latest
    assert public(migrated) == []
    with migrated.connect("app") as app:
        created = app.execute(
            "SELECT count(*) FROM dbq_app.dbq_create_jobs_v3(ARRAY[gen_random_uuid(), "
            'gen_random_uuid()], \'[{"name": "testjob"}]\', ARRAY[0, 0])'
        ).fetchone()
    assert created == (2,)
