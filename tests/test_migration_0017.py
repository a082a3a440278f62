"""Migrations 0017 (hash chains, seals) and 0018 (the hashes of older events) on a ledger
made before them, with roles; back to 0016 and forward again.

The ledger of the previous release gets its chains and heads, verifies, and its
first seal covers it; a job claimed before the upgrade finishes after it on a
chain that still holds. The way back leaves every function as 0016 had it.
"""

from __future__ import annotations

import pytest

from tests import scratch_roles as rv
from tests.test_migration_0011 import functions, migrate, public

KEY = "a-test-ledger-key-of-32-bytes!!!"
# Replaced in place or superseded by 0017: a way back past it restores them as
# they were, so tests of earlier migrations leave them out of their comparisons.
CHANGED_BY_0017 = (
    "dbq_create_job_v2",
    "dbq_create_jobs_v3",
    "dbq_delete_old_jobs_v3",
    "dbq_claim_jobs_v4",
    "dbq_record_outcomes_v1",
    "dbq_fold_events_v2",
    "dbq_apply_events_v5",
    "dbq_fold_events_scratch_v2",
    "dbq_job_row_v1",
)
NEW = (
    "dbq_chain_event_v1",
    "dbq_require_mac_v1",
    "dbq_protect_proof_v1",
    "dbq_sign_retired_v1",
    "dbq_sign_seal_v1",
    "dbq_prepare_seal_v1",
    "dbq_seal_window_v1",
    "dbq_committed_event_id_v1",
    "dbq_event_hash_v1",
    "dbq_event_hash_text_v1",
    "dbq_delete_old_jobs_v4",
    "dbq_retire_old_jobs_v1",
    "dbq_job_row_v2",
    # pgtrigger's stubs of the new triggers.
    "pgtrigger_chain_event_d15a4",
    "pgtrigger_retired_signed_ff234",
    "pgtrigger_seal_signed_37b7d",
    "pgtrigger_protect_retired_40c35",
    "pgtrigger_protect_seals_cb6b2",
)
LEASE_KEY = "k" * 64


# Made or replaced in place by later migrations (0019 replaced the claim, listed
# above): a way back past them restores or drops them.
CHANGED_LATER = (
    "dbq_delete_old_jobs_v5",  # 0021
    "dbq_retire_old_jobs_v2",  # 0021
    "dbq_replay_events_v5",  # 0022
    "dbq_replay_events_scratch_v5",  # 0022
    "dbq_replay_copy_scratch_v5",  # 0022
)


def unchanged(listed):
    """The functions neither 0017 nor a later migration made or changed, by signature."""
    skip = CHANGED_BY_0017 + NEW + CHANGED_LATER
    return {k: v for k, v in listed.items() if k.split("(")[0] not in skip}


@pytest.fixture
def at_0016(monkeypatch):
    monkeypatch.setenv("DBQ_TEST_LEDGER_KEY", KEY)
    db = rv.create("m17")  # with the roles' grants
    migrate(db, "django_dbq", "0016_create_jobs_v3")
    yield db
    rv.drop(db)


def test_0017_0018__hash_an_older_ledger_that_then_verifies_seals_and_goes_back(at_0016):
    before = functions(at_0016)
    assert not [k for k in before if k.split("(")[0] in NEW]
    with at_0016.connect("app") as app:
        for _ in range(4):
            app.execute('SELECT dbq_create_job_v2(gen_random_uuid(), \'{"name": "testjob"}\')')
    with at_0016.connect("worker") as worker:
        claimed = [
            row[0]
            for row in worker.execute(
                "SELECT id FROM dbq_claim_jobs_v4('default', 2, 'w', %s, 'h', 1, 30)", [LEASE_KEY]
            )
        ]
        worker.execute(
            "SELECT dbq_record_outcomes_v1(%s, jsonb_build_array(jsonb_build_object("
            "'job_id', %s::uuid, 'kind', 'completed', 'payload', '{}'::jsonb)))",
            [LEASE_KEY, claimed[0]],
        )

    migrate(at_0016)
    with at_0016.connect("owner") as owner:
        assert owner.execute(
            "SELECT count(*) FILTER (WHERE hash IS NULL), count(*) FROM django_dbq_jobevent"
        ).fetchone() == (0, 7)
        assert owner.execute(
            "SELECT count(*) FROM django_dbq_job j JOIN django_dbq_jobevent e"
            " ON e.job_id = j.id AND e.version = j.version WHERE j.head = e.hash"
        ).fetchone() == (4,)
    # The job claimed before the upgrade finishes after it, on its chain.
    with at_0016.connect("worker") as worker:
        worker.execute(
            "SELECT dbq_record_outcomes_v1(%s, jsonb_build_array(jsonb_build_object("
            "'job_id', %s::uuid, 'kind', 'completed', 'payload', '{}'::jsonb)))",
            [LEASE_KEY, claimed[1]],
        )
    sealed = at_0016.manage("maintenance", "seal_ledger")
    assert sealed.returncode == 0, sealed.stderr[-2000:]
    assert "sealed 1: 8 events, 8 in all" in sealed.stdout
    verified = at_0016.manage("maintenance", "replay_events", "--verify")
    assert verified.returncode == 0, verified.stderr[-2000:]
    assert "the hash chains of 8 events hold; 1 seals verify" in verified.stdout

    latest = functions(at_0016)
    migrate(at_0016, "django_dbq", "0016_create_jobs_v3")
    assert functions(at_0016) == before
    assert public(at_0016) == []
    with at_0016.connect("app") as app:
        app.execute('SELECT dbq_create_job_v2(gen_random_uuid(), \'{"name": "testjob"}\')')
    migrate(at_0016)
    assert functions(at_0016) == latest
    assert public(at_0016) == []
    verified = at_0016.manage("owner", "replay_events", "--verify")
    assert verified.returncode == 0, verified.stderr[-2000:]
