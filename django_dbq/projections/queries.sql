-- Named statements of the read side: replay and verification of the projection.

-- name: ledger_lock
-- Holds off new events (every write is one) while the projection is rebuilt,
-- and waits for transactions that are appending now to finish.
LOCK TABLE django_dbq_jobevent IN SHARE MODE

-- name: projection_replay
-- Rebuild django_dbq_job from the ledger, in slices of at most about
-- slice_bytes of events; returns the number of events applied.
SELECT dbq_replay_events_v4(NULL::timestamptz, NULL::uuid[], %(slice_bytes)s::bigint)

-- name: projection_replay_as_of
-- Rebuild the projection (or some jobs' rows) as it was at a time; callers roll back.
SELECT dbq_replay_events_v4(%(until)s::timestamptz, %(job_ids)s::uuid[], 134217728::bigint)

-- name: projection_snapshot
-- Copy the live projection aside before it is rebuilt for comparison.
CREATE TEMP TABLE dbq_live ON COMMIT DROP AS SELECT * FROM django_dbq_job

-- name: projection_count_drift
-- How many jobs differ, in any column, between the live copy and the rebuild.
-- The copy has the projection's columns in the same order, so the rows compare
-- column by column with each type's own equality (a row absent on one side is
-- all NULLs there); five times faster than comparing them as JSON.
SELECT count(*)
FROM dbq_live l
FULL JOIN django_dbq_job r ON r.id = l.id
WHERE (l.*) IS DISTINCT FROM (r.*)

-- name: projection_list_drift
-- The first differing jobs, each as its live row and its rebuilt row (NULL when absent).
SELECT COALESCE(l.id, r.id) AS id, to_jsonb(l) AS live, to_jsonb(r) AS replayed
FROM dbq_live l
FULL JOIN django_dbq_job r ON r.id = l.id
WHERE (l.*) IS DISTINCT FROM (r.*)
ORDER BY 1
LIMIT %(limit)s

-- name: projection_count
SELECT count(*) FROM django_dbq_job

-- name: stats_by_queue_and_state
-- How many jobs each queue holds in each state.
SELECT queue_name, state, count(*) FROM django_dbq_job GROUP BY 1, 2 ORDER BY 1, 2

-- name: stats_oldest_waiting
-- Per queue, the age in seconds of the oldest job that could run now and waits.
SELECT queue_name, extract(epoch FROM now() - min(created))::float8
FROM django_dbq_job
WHERE state IN ('NEW', 'READY') AND (run_after IS NULL OR run_after <= now())
GROUP BY 1

-- name: stats_recent_outcomes
-- Per queue, jobs completed and failed in the last `minutes` minutes, from the ledger.
SELECT j.queue_name, e.kind, count(*)
FROM django_dbq_jobevent e
JOIN django_dbq_job j ON j.id = e.job_id
WHERE e.at > now() - make_interval(mins => %(minutes)s) AND e.kind IN ('completed', 'failed')
GROUP BY 1, 2

-- name: stats_unknown_names
-- Per queue, the waiting jobs whose name is not among `names` (the job names this
-- process's settings.JOBS knows): no worker with these settings claims them.
SELECT queue_name, name, count(*)
FROM django_dbq_job
WHERE state IN ('NEW', 'READY') AND NOT (name = ANY(%(names)s::text[]))
GROUP BY 1, 2
ORDER BY 1, 2
