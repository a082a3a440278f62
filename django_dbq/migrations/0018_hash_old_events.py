"""The hashes of the events appended before migration 0017, and their jobs' heads.

Job by job, in batches of BATCH_JOBS in their own transactions (the migration is
not atomic): each batch holds off appends for the time it takes (it switches
the ledger's append-only guard off for its own UPDATE, which locks out writers
of the ledger, not its readers), computes the chains of its jobs from their
first events and the head of each job's row; the first seal after covers them
(sealing waits while an event of its window has no hash). Events appended between batches to a job not yet
hashed get no hash (their previous one is unknown) until its batch; a last
pass takes the jobs that still have an event without one. Measured: about
48 s per million events on a 2-core machine, each batch about 0.7 s
(benchmarks/backfill.py).

The way back does nothing: the columns go with migration 0017's way back.
"""

from django.db import migrations, transaction

from django_dbq.exceptions import MigrationHistoryError

BATCH_JOBS = 5000

GUARD = """
SELECT t.tgname FROM pg_trigger t
WHERE t.tgrelid = 'django_dbq_jobevent'::regclass AND t.tgname LIKE 'pgtrigger_protect_ledger_%%'
"""

# The jobs after `after` (in id order), or those of `job_ids`: their chains
# from version 1, round by round (a recursive query), written where they
# differ; returns the last job id and how many jobs.
CHAIN = """
WITH RECURSIVE jobs AS (
    SELECT j.id FROM django_dbq_job j
    WHERE (%(job_ids)s::uuid[] IS NULL AND (%(after)s::uuid IS NULL OR j.id > %(after)s::uuid))
       OR j.id = ANY(%(job_ids)s::uuid[])
    ORDER BY j.id
    LIMIT %(size)s
    FOR NO KEY UPDATE
), chain AS (
    SELECT e.id, e.job_id, e.version,
           dbq_event_hash_v1(NULL::bytea, e.job_id, 1, e.kind::text, e.payload, e.at) AS hash
    FROM django_dbq_jobevent e
    WHERE e.job_id IN (SELECT id FROM jobs) AND e.version = 1
    UNION ALL
    SELECT e.id, e.job_id, e.version,
           dbq_event_hash_v1(c.hash, e.job_id, e.version::integer, e.kind::text, e.payload, e.at)
    FROM chain c
    JOIN django_dbq_jobevent e ON e.job_id = c.job_id AND e.version = c.version + 1
), events AS (
    UPDATE django_dbq_jobevent e SET hash = c.hash
    FROM chain c
    WHERE e.id = c.id AND e.hash IS DISTINCT FROM c.hash
), heads AS (
    SELECT DISTINCT ON (c.job_id) c.job_id, c.hash FROM chain c ORDER BY c.job_id, c.version DESC
), moved AS (
    UPDATE django_dbq_job j SET head = h.hash
    FROM heads h
    WHERE j.id = h.job_id AND j.head IS DISTINCT FROM h.hash
)
SELECT max(id::text)::uuid, count(*) FROM jobs
"""

LEFT = "SELECT array_agg(DISTINCT job_id) FROM django_dbq_jobevent WHERE hash IS NULL"


def hash_old_events(apps, schema_editor):
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        cursor.execute(GUARD)
        (guard,) = cursor.fetchone()

    def batch(after, job_ids):
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(f'ALTER TABLE django_dbq_jobevent DISABLE TRIGGER "{guard}"')
            cursor.execute("SELECT set_config('dbq.applying', 'on', true)")
            # Each round of the chain looks up the next events by (job_id,
            # version); a hash of the whole ledger per round (the planner's
            # guess for a recursive query) costs a read of it each time.
            cursor.execute("SET LOCAL enable_hashjoin = off")
            cursor.execute("SET LOCAL enable_mergejoin = off")
            cursor.execute(CHAIN, {"after": after, "job_ids": job_ids, "size": BATCH_JOBS})
            last, count = cursor.fetchone()
            cursor.execute(f'ALTER TABLE django_dbq_jobevent ENABLE TRIGGER "{guard}"')
            return last, count

    after = None
    while True:
        after, count = batch(after, None)
        if count < BATCH_JOBS:
            break
    for _ in range(10):
        with connection.cursor() as cursor:
            cursor.execute(LEFT)
            (left,) = cursor.fetchone()
        if not left:
            return
        for start in range(0, len(left), BATCH_JOBS):
            batch(None, [str(job_id) for job_id in left[start : start + BATCH_JOBS]])
    raise MigrationHistoryError(
        f"django_dbq: events of {len(left)} jobs still have no hash after ten passes, e.g. "
        f"{', '.join(map(str, left[:5]))}: events without a projection row, or a history "
        "with a gap in its versions (replay_events --verify names them). Nothing is sealed "
        "until they have one; fix them, then run migrate again."
    )


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("django_dbq", "0017_ledger_proof"),
    ]

    operations = [
        migrations.RunPython(hash_old_events, migrations.RunPython.noop),
    ]
