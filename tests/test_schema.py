"""Guards on the schema: migrations match the models, the claim query uses its index."""

import re
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection

from django_dbq.events.models import QUEUE_OCCURS_WHEN, EventKind, QueueEventKind
from django_dbq.models import Job
from django_dbq.sqlfiles import load_queries, read_sql


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
    state_machine = read_sql("django_dbq.projections", "sql/apply.sql")
    missing = [k for k in EventKind.values if f"'{k}'" not in state_machine]

    assert missing == [], f"dbq_next_state_v2 does not handle {missing}; add a rule and a _v3"


def test_queue_state_machine__names_every_queue_event_kind_and_when_it_occurs():
    fold = read_sql("django_dbq.projections", "sql/queues.sql")
    missing = [k for k in QueueEventKind.values if f"WHEN '{k}' THEN" not in fold]

    assert missing == [], f"dbq_queue_event_is_illegal_v1 does not handle {missing}; add a _v2"
    assert set(QUEUE_OCCURS_WHEN) == set(QueueEventKind.values)


def claim_statement():
    """The statement inside dbq_claim_jobs_v4, with its parameters as query parameters."""
    body = read_sql("django_dbq.events", "sql/worker.sql").replace("@schema@", "public")
    body = body[body.index("FUNCTION public.dbq_claim_jobs_v4") :]
    statement = body[body.index("RETURN QUERY") + len("RETURN QUERY") : body.index(";\nEND")]
    for name in ("p_queue_name", "max_jobs", "p_worker", "p_host", "p_pid", "key_hash"):
        statement = re.sub(rf"\b{name}\b", f"%({name})s", statement)
    statement = re.sub(r"\buntil\b", "%(until)s::timestamptz", statement)
    statement = re.sub(r"\bp_names\b", "%(p_names)s::text[]", statement)
    return statement


# claim_statement()'s parameters: a claim of 10 from the default queue.
CLAIM_PARAMS = {
    "p_queue_name": "default",
    "max_jobs": 10,
    "p_worker": "w",
    "p_host": "h",
    "p_pid": 1,
    "until": "2030-01-01T00:00:00Z",
    "key_hash": "0" * 64,
    "p_names": None,
}


@pytest.mark.django_db
def test_claim_query__is_served_by_the_partial_index():
    Job.objects.bulk_create([Job(name="testjob", state="COMPLETE") for _ in range(5000)])
    Job.objects.bulk_create([Job(name="testjob") for _ in range(20)])
    params = {**CLAIM_PARAMS, "p_names": ["testjob"]}
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE django_dbq_job")
        cursor.execute("EXPLAIN " + claim_statement(), params)
        plan = "\n".join(row[0] for row in cursor.fetchall())

    # The ready jobs come off their index in claim order (no sort); the due scheduled
    # ones off theirs, the due ones only, sorted. No scan of the table.
    lines = [line.strip() for line in plan.splitlines()]
    locked = [i for i, line in enumerate(lines) if line.startswith("->  LockRows")]
    assert len(locked) == 2, plan
    assert lines[locked[0] + 1].startswith("->  Sort"), plan
    scan = next(line for line in lines[locked[0] + 2 :] if line.startswith("->"))
    assert "Index Scan using django_dbq_job_scheduled" in scan, plan
    assert "Index Scan using django_dbq_job_ready" in lines[locked[1] + 1], plan
    assert "Seq Scan on django_dbq_job " not in plan, plan


CALLING_QUERIES = [
    ("django_dbq.events", "queries.sql"),
    ("django_dbq.events", "claims.sql"),
    ("django_dbq.projections", "queries.sql"),
]


def test_function_calls__cast_every_argument_to_its_exact_type():
    # An argument of type unknown (a string) or smallint (a small int) leaves room
    # for an overload planted in a schema of the search_path to be a closer match.
    loose = []
    for package, filename in CALLING_QUERIES:
        for name, sql in load_queries(package, filename).items():
            for function, args in re.findall(r"\b(dbq_\w+)\(([^()]*)\)", sql):
                # A call without arguments leaves an overload no room.
                for arg in (a.strip() for a in args.split(",") if args.strip()):
                    if not re.fullmatch(r"(%\(\w+\)s|NULL|\d+)::[a-z0-9_]+(\[\])?", arg):
                        loose.append(f"{filename} {name}: {function}(... {arg} ...)")

    assert loose == [], "cast these arguments to the function's parameter types:\n" + "\n".join(
        loose
    )
