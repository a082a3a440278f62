"""Migration 0015 (periodic jobs) back to 0014 and forward again, with roles.

The way back drops the schedules' table and both functions and leaves every
other function as it was; the way forward gives the workers the tick function
and every reader of the job table SELECT on the new one, as ledger_grants does.
"""

from __future__ import annotations

import pytest

from tests import scratch_roles as rv
from tests.test_migration_0011 import functions, migrate, public
from tests.test_migration_0017 import unchanged

TABLE_READERS = """
SELECT r.rolname FROM pg_roles r
WHERE r.rolname = ANY(%s) AND has_table_privilege(r.oid, 'dbq_app.django_dbq_schedule', 'SELECT')
ORDER BY 1
"""
NEW = ("dbq_enqueue_ticks_v1(text,jsonb)", "dbq_check_ticks_v1(text,jsonb)")
# Made by the migrations after 0015, which the way back to 0014 undoes too.
LATER = ("dbq_create_jobs_v3(uuid[],jsonb,integer[])",)


@pytest.fixture
def migrated():
    db = rv.create("m15")
    yield db
    rv.drop(db)


def readers(db):
    with db.connect("owner") as owner:
        names = [db.roles[k] for k in ("worker", "app", "maintenance", "none")]
        return [row[0] for row in owner.execute(TABLE_READERS, [names])]


def test_0015_back_and_forward__drops_what_it_made_and_grants_it_again(migrated):
    latest = functions(migrated)
    assert set(NEW) <= set(latest)
    assert f"{migrated.roles['worker']}:EXECUTE" in latest[NEW[0]][0]
    assert latest[NEW[1]][0] == []  # granted to no one: the tick function calls it
    before_readers = readers(migrated)
    assert len(before_readers) == 3

    migrate(migrated, "django_dbq", "0014_unique_jobs")
    with migrated.connect("owner") as owner:
        assert owner.execute("SELECT to_regclass('dbq_app.django_dbq_schedule')").fetchone() == (
            None,
        )
    back = functions(migrated)
    assert unchanged(back) == unchanged({k: v for k, v in latest.items() if k not in NEW + LATER})

    migrate(migrated)
    assert functions(migrated) == latest
    assert readers(migrated) == before_readers
    assert public(migrated) == []
