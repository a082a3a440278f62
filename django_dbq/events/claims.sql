-- Named statements of the worker's side of the ledger. Each calls one function of
-- sql/claims_v1.sql (installed by migration 0002), which appends events in one
-- statement; the ledger's trigger applies them to the projection as a set.

-- name: jobs_claim
-- Claim up to `limit` ready jobs of a queue, in claim order, with a `claimed` event each.
SELECT * FROM dbq_claim_jobs_v1(
    %(queue_name)s, %(limit)s, %(worker)s, %(host)s, %(pid)s, %(lease_seconds)s::float8
)

-- name: jobs_append_held
-- Append one event per job the worker holds (outcomes, stopping, released); the
-- events come as one JSON array of {job_id, kind, payload}. Returns the ids recorded.
SELECT * FROM dbq_append_held_v1(%(worker)s, %(events)s::jsonb)

-- name: jobs_renew_leases
-- The heartbeat: extend the worker's lease on the jobs it holds.
SELECT * FROM dbq_renew_leases_v1(%(worker)s, %(job_ids)s::uuid[], %(lease_seconds)s::float8)

-- name: jobs_expire_leases
-- Return to their queue the running jobs whose lease has run out.
SELECT * FROM dbq_expire_leases_v1(%(worker)s, %(limit)s)

-- name: jobs_seconds_until_due
-- Seconds until the soonest scheduled job of a queue comes due; NULL when none waits.
SELECT EXTRACT(EPOCH FROM min(run_after) - now())::float8
FROM django_dbq_job
WHERE queue_name = %(queue_name)s
  AND state IN ('NEW', 'READY')
  AND run_after > now()
