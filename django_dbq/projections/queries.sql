-- Named statements of the read side: replay and verification of the projection.

-- name: ledger_lock
-- Holds off new events (every write is one) while the projection is rebuilt,
-- and waits for transactions that are appending now to finish.
LOCK TABLE django_dbq_jobevent IN SHARE MODE

-- name: projection_replay
-- Rebuild django_dbq_job from the ledger; returns the number of events applied.
SELECT dbq_replay_events_v1()

-- name: projection_snapshot
-- Copy the live projection aside before it is rebuilt for comparison.
CREATE TEMP TABLE dbq_live ON COMMIT DROP AS SELECT * FROM django_dbq_job

-- name: projection_count_drift
-- How many jobs differ, in any column, between the live copy and the rebuild.
SELECT count(*)
FROM dbq_live l
FULL JOIN django_dbq_job r ON r.id = l.id
WHERE to_jsonb(l) IS DISTINCT FROM to_jsonb(r)

-- name: projection_list_drift
-- The first differing jobs, each as its live row and its rebuilt row (NULL when absent).
SELECT COALESCE(l.id, r.id) AS id, to_jsonb(l) AS live, to_jsonb(r) AS replayed
FROM dbq_live l
FULL JOIN django_dbq_job r ON r.id = l.id
WHERE to_jsonb(l) IS DISTINCT FROM to_jsonb(r)
ORDER BY 1
LIMIT %(limit)s

-- name: projection_count
SELECT count(*) FROM django_dbq_job
