-- Named statements of the worker's side of the ledger. Each is one statement that
-- appends events; the ledger's trigger applies them to the projection as a set.
-- "Held" jobs are PROCESSING or STOPPING jobs whose claimed_by is the worker: a
-- worker only ever records events for jobs it still holds, so a worker whose
-- lease ran out cannot overwrite what the next worker does with the job.

-- name: jobs_claim
-- Claim up to `limit` ready jobs of a queue, in claim order (priority high to
-- low, then oldest first), with a `claimed` event each. SKIP LOCKED lets workers
-- claim side by side without waiting on each other's rows; the lease runs on the
-- database clock. Returns the claimed rows as they are after the claim.
WITH ready AS (
    SELECT id, created, name, next_task, workspace, queue_name, priority, run_after, version, state
    FROM django_dbq_job
    WHERE queue_name = %(queue_name)s
      AND state IN ('NEW', 'READY')
      AND (run_after IS NULL OR run_after <= now())
    ORDER BY priority DESC, created
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)
    SELECT id, version + 1, 'claimed', jsonb_build_object(
        'worker', %(worker)s::text,
        'host', %(host)s::text,
        'pid', %(pid)s::int,
        'lease_until', now() + make_interval(secs => %(lease_seconds)s))
    FROM ready
    ORDER BY priority DESC, created
    RETURNING job_id, at, payload
)
-- Times come as epoch seconds (float8 keeps microseconds): far cheaper for the
-- worker to read than timestamp text.
SELECT r.id, extract(epoch FROM r.created)::float8, extract(epoch FROM c.at)::float8,
       r.name, 'PROCESSING', r.next_task, r.workspace, r.queue_name, r.priority,
       r.run_after, r.version + 1, %(worker)s::text,
       extract(epoch FROM (c.payload ->> 'lease_until')::timestamptz)::float8, r.state
FROM ready r
JOIN claimed c ON c.job_id = r.id
ORDER BY r.priority DESC, r.created

-- name: jobs_append_held
-- Append one event per held job (task_done, completed, failed, stopping,
-- released) in one statement; the events come as one JSON array of
-- {job_id, kind, payload}. The row lock makes a concurrent lease expiry
-- either wait for this statement or win it, in which case the job is no longer
-- held and is skipped. Returns the ids of the jobs whose event was recorded.
WITH incoming AS (
    SELECT *
    FROM ROWS FROM (jsonb_to_recordset(%(events)s::jsonb) AS (job_id uuid, kind text, payload jsonb))
        WITH ORDINALITY AS i(job_id, kind, payload, n)
), held AS (
    SELECT j.id, j.version
    FROM django_dbq_job j
    WHERE j.id IN (SELECT job_id FROM incoming)
      AND j.claimed_by = %(worker)s
      AND j.state IN ('PROCESSING', 'STOPPING')
    FOR NO KEY UPDATE
)
INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)
SELECT i.job_id, h.version + 1, i.kind, i.payload
FROM incoming i
JOIN held h ON h.id = i.job_id
ORDER BY i.n
RETURNING job_id

-- name: jobs_renew_leases
-- The heartbeat: extend the lease of every job the worker holds to `lease_seconds`
-- from now, so that a long task is not taken for abandoned.
WITH held AS (
    SELECT j.id, j.version
    FROM django_dbq_job j
    WHERE j.id = ANY(%(job_ids)s::uuid[])
      AND j.claimed_by = %(worker)s
      AND j.state IN ('PROCESSING', 'STOPPING')
    FOR NO KEY UPDATE
)
INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)
SELECT id, version + 1, 'lease_renewed', jsonb_build_object(
    'worker', %(worker)s::text,
    'lease_until', now() + make_interval(secs => %(lease_seconds)s))
FROM held
RETURNING job_id

-- name: jobs_expire_leases
-- Return to their queue the running jobs whose lease has run out (their worker
-- died or lost the database), with a `lease_expired` event naming the old holder.
-- Jobs imported as PROCESSING from django-db-queue have no lease and count as run out.
WITH lapsed AS (
    SELECT id, version, claimed_by, lease_until
    FROM django_dbq_job
    WHERE state IN ('PROCESSING', 'STOPPING')
      AND (lease_until < now() OR lease_until IS NULL)
    ORDER BY lease_until NULLS FIRST
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)
SELECT id, version + 1, 'lease_expired', jsonb_build_object(
    'worker', claimed_by, 'lease_until', lease_until, 'noticed_by', %(worker)s::text)
FROM lapsed
RETURNING job_id

-- name: jobs_seconds_until_due
-- Seconds until the soonest scheduled job of a queue comes due; NULL when none waits.
SELECT EXTRACT(EPOCH FROM min(run_after) - now())::float8
FROM django_dbq_job
WHERE queue_name = %(queue_name)s
  AND state IN ('NEW', 'READY')
  AND run_after > now()
