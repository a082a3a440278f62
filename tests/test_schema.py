"""Guards on the schema: migrations match the models, the claim query uses its index."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection

from django_dbq.events.claims import claim_jobs
from django_dbq.events.models import EventKind
from django_dbq.models import Job
from django_dbq.sqlfiles import read_sql


@pytest.mark.django_db
def test_migrations__match_the_models():
    out = StringIO()
    try:
        call_command("makemigrations", "django_dbq", "--check", "--dry-run", stdout=out)
    except SystemExit:
        pytest.fail(
            f"Models and migrations differ; you probably need to add a migration:\n{out.getvalue()}"
        )


def test_state_machine__names_every_event_kind():
    state_machine = read_sql("django_dbq.projections", "sql/apply_events_v1.sql")
    missing = [k for k in EventKind.values if f"'{k}'" not in state_machine]

    assert missing == [], f"dbq_apply_events_v1 does not handle {missing}; add a rule and a _v2"


@pytest.mark.django_db
def test_claim_query__is_served_by_the_partial_index():
    Job.objects.bulk_create([Job(name="testjob", state="COMPLETE") for _ in range(5000)])
    Job.objects.bulk_create([Job(name="testjob") for _ in range(20)])
    plans = []
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE django_dbq_job")
        # The claim runs inside dbq_claim_jobs_v1; auto_explain shows its inner plan.
        cursor.execute("LOAD 'auto_explain'")
        cursor.execute(
            "SET LOCAL auto_explain.log_min_duration = 0;"
            " SET LOCAL auto_explain.log_nested_statements = on;"
            " SET LOCAL auto_explain.log_level = notice; SET LOCAL client_min_messages = notice"
        )
    connection.connection.add_notice_handler(lambda notice: plans.append(notice.message_primary))
    claim_jobs("default", 10, "w", "h", 1, 30)
    plan = next(p for p in plans if "LockRows" in p)

    # The ready jobs come off the index in claim order: no scan of the table, no sort.
    lines = [line.strip() for line in plan.splitlines()]
    lock_rows = next(i for i, line in enumerate(lines) if line.startswith("->  LockRows"))
    assert "Index Scan using django_dbq_job_claimable" in lines[lock_rows + 1], plan
    assert "Seq Scan on django_dbq_job " not in plan, plan
