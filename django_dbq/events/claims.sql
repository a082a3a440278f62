-- Named statements of the worker's side of the ledger. Each calls one function of
-- sql/worker.sql, which appends events in one statement; the ledger's trigger
-- applies them to the projection as a set. `key` is the worker's secret key:
-- these statements are bound by the server (events/claims.py), so that it never
-- appears in the statement text that pg_stat_activity shows. Every argument is
-- cast to its parameter's exact type, so that no overload planted in a schema
-- of the search_path is a closer match (tests/test_schema.py checks).

-- name: jobs_claim
-- Claim up to `limit` ready jobs of a queue, in claim order, with a `claimed` event
-- each (recording its place in the batch); `names` (NULL: any) are the job names
-- the worker can run. A paused queue gives none.
SELECT * FROM dbq_claim_jobs_v4(
    %(queue_name)s::text, %(limit)s::integer, %(worker)s::text, %(key)s::text, %(host)s::text,
    %(pid)s::integer, %(lease_seconds)s::float8, %(names)s::text[]
)

-- name: jobs_append_held
-- Record one outcome per job the worker holds (task_done, completed, failed,
-- retried, stopping, released); the events come as one JSON array of
-- {job_id, kind, payload}. Returns the ids recorded.
SELECT * FROM dbq_record_outcomes_v1(%(key)s::text, %(events)s::jsonb)

-- name: jobs_record_and_claim
-- Record the outcomes of the batch just run, then claim the next batch: one
-- statement, one round trip, one commit (a paused queue gives no jobs). Rows
-- with `recorded` true are the jobs whose outcome was recorded; the others are
-- the claimed jobs.
SELECT * FROM dbq_record_and_claim_v3(
    %(key)s::text, %(events)s::jsonb, %(queue_name)s::text, %(limit)s::integer, %(worker)s::text,
    %(host)s::text, %(pid)s::integer, %(lease_seconds)s::float8, %(names)s::text[]
)

-- name: jobs_save_held
-- job.save() inside a task: `updated` events for jobs the worker holds.
SELECT * FROM dbq_save_held_v2(%(key)s::text, %(events)s::jsonb)

-- name: jobs_save_failed
-- What the failure and post-task hooks changed in jobs the worker has just failed.
SELECT * FROM dbq_save_failed_v1(%(key)s::text, %(events)s::jsonb)

-- name: jobs_renew_leases
-- The heartbeat: extend the worker's lease on the jobs it holds.
SELECT * FROM dbq_renew_leases_v2(%(key)s::text, %(job_ids)s::uuid[], %(lease_seconds)s::float8)

-- name: jobs_expire_leases
-- Return to their queue the running jobs whose lease has run out; the job a lost
-- worker was running counts an attempt (`retried` or `failed`, WorkerLost) under
-- `rules`, {job name: {"limit": n, "delays": [seconds, ...]}}.
SELECT * FROM dbq_expire_leases_v4(%(worker)s::text, %(limit)s::integer, %(rules)s::jsonb)

-- name: jobs_seconds_until_due
-- Seconds until the soonest scheduled job of a queue comes due; NULL when none waits.
-- The first entry after now of django_dbq_job_scheduled (its condition repeated),
-- whatever the number of jobs scheduled.
SELECT EXTRACT(EPOCH FROM min(run_after) - now())::float8
FROM django_dbq_job
WHERE queue_name = %(queue_name)s
  AND state IN ('NEW', 'READY')
  AND run_after > created
  AND run_after > now()
