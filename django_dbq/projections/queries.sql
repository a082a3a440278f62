-- Named statements of the read side: replay and verification of the projection.

-- name: ledger_lock
-- Holds off new events of both ledgers (every write is one) while the
-- projections are rebuilt, and waits for transactions that are appending now
-- to finish.
LOCK TABLE django_dbq_jobevent, django_dbq_queueevent IN SHARE MODE

-- name: projection_replay
-- Rebuild django_dbq_job from the ledger, in slices of at most about
-- slice_bytes of events; returns the number of events applied.
SELECT dbq_replay_events_v5(NULL::timestamptz, NULL::uuid[], %(slice_bytes)s::bigint)

-- name: queues_replay
-- Rebuild django_dbq_queue from the queue ledger; returns the number of events applied.
SELECT dbq_replay_queue_events_v1()

-- name: audit_isolation
-- Inside a caller's transaction: whether its statements share one snapshot.
SELECT current_setting('transaction_isolation') <> 'read committed'

-- The audit reads (scratch_*) run with search_path pinned to pg_catalog, the
-- app's schema, pg_temp (replay._pin_search_path), and name pg_catalog's
-- functions that take a row, which an overload in the app's schema could match
-- more closely.

-- name: scratch_projection
-- What an audit read rebuilds the projection into: a table of this session
-- alone with the projection's columns, no index, trigger or foreign key, gone
-- with the read's transaction (or savepoint).
CREATE TEMP TABLE dbq_scratch_job (LIKE django_dbq_job) ON COMMIT DROP

-- name: scratch_live_view
-- The live rows verify compares with, in the read's one snapshot.
CREATE TEMP VIEW dbq_scratch_live AS SELECT * FROM django_dbq_job

-- name: scratch_live_table
CREATE TEMP TABLE dbq_scratch_live (LIKE django_dbq_job) ON COMMIT DROP

-- name: scratch_events_table
-- One row per job, its events as an array of ledger rows: unnest gives them
-- back to the replay as rows of the ledger's type.
CREATE TEMP TABLE dbq_scratch_jobevent (events django_dbq_jobevent[]) ON COMMIT DROP

-- name: scratch_copy
-- Inside a caller's READ COMMITTED transaction each statement sees the database
-- anew, so the events to replay (and, when `live`, the live rows) are copied in
-- this one statement, from one snapshot, before the rebuild reads them.
WITH live AS (
    INSERT INTO pg_temp.dbq_scratch_live SELECT * FROM django_dbq_job WHERE %(live)s::boolean
)
INSERT INTO pg_temp.dbq_scratch_jobevent
SELECT pg_catalog.array_agg(e)
FROM django_dbq_jobevent e
WHERE (%(until)s::timestamptz IS NULL OR e.at <= %(until)s::timestamptz)
  AND (%(job_ids)s::uuid[] IS NULL OR e.job_id = ANY(%(job_ids)s::uuid[]))
GROUP BY e.job_id

-- name: scratch_replay
-- Rebuild the projection (at `until`, of `job_ids`) from the ledger into the
-- scratch table; returns the number of events applied.
SELECT dbq_replay_events_scratch_v5(%(until)s::timestamptz, %(job_ids)s::uuid[], %(slice_bytes)s::bigint)

-- name: scratch_replay_copy
-- The same from the copy of the events (scratch_copy).
SELECT dbq_replay_copy_scratch_v5(%(until)s::timestamptz, %(job_ids)s::uuid[], %(slice_bytes)s::bigint)

-- name: scratch_count
SELECT pg_catalog.count(*) FROM pg_temp.dbq_scratch_job

-- name: scratch_jobs
-- The rebuilt rows, in the order of Job.Meta.ordering.
SELECT * FROM pg_temp.dbq_scratch_job ORDER BY priority DESC, created

-- name: scratch_count_drift
-- How many jobs differ, in any column, between the live rows and the rebuild.
-- Both have the projection's columns in the same order, so the rows compare
-- column by column with each type's own equality (a row absent on one side is
-- NULL there); five times faster than comparing them as JSON.
SELECT pg_catalog.count(*)
FROM pg_temp.dbq_scratch_live l
FULL JOIN pg_temp.dbq_scratch_job r ON r.id = l.id
WHERE (l.*) IS DISTINCT FROM (r.*)

-- name: scratch_list_drift
-- The first differing jobs, each as its live row and its rebuilt row (NULL when absent).
SELECT COALESCE(l.id, r.id) AS id, pg_catalog.to_jsonb(l) AS live, pg_catalog.to_jsonb(r) AS replayed
FROM pg_temp.dbq_scratch_live l
FULL JOIN pg_temp.dbq_scratch_job r ON r.id = l.id
WHERE (l.*) IS DISTINCT FROM (r.*)
ORDER BY 1
LIMIT %(limit)s

-- The same for the queue projection (verify): the scratch table keeps the
-- primary key, on which the fold's upsert relies.

-- name: scratch_queue_projection
CREATE TEMP TABLE dbq_scratch_queue (LIKE django_dbq_queue INCLUDING INDEXES) ON COMMIT DROP

-- name: scratch_queue_live_view
CREATE TEMP VIEW dbq_scratch_queue_live AS SELECT * FROM django_dbq_queue

-- name: scratch_queue_live_table
CREATE TEMP TABLE dbq_scratch_queue_live (LIKE django_dbq_queue) ON COMMIT DROP

-- name: scratch_queue_events_table
CREATE TEMP TABLE dbq_scratch_queueevent (events django_dbq_queueevent[]) ON COMMIT DROP

-- name: scratch_queue_copy
-- Inside a caller's READ COMMITTED transaction: the queue ledger and the live
-- queue rows, copied in one statement, from one snapshot.
WITH live AS (
    INSERT INTO pg_temp.dbq_scratch_queue_live SELECT * FROM django_dbq_queue
)
INSERT INTO pg_temp.dbq_scratch_queueevent
SELECT pg_catalog.array_agg(e) FROM django_dbq_queueevent e

-- name: scratch_queue_replay
SELECT dbq_replay_queue_events_scratch_v1()

-- name: scratch_queue_replay_copy
SELECT dbq_replay_queue_copy_scratch_v1()

-- name: scratch_queue_count
SELECT pg_catalog.count(*) FROM pg_temp.dbq_scratch_queue

-- name: scratch_queue_list_drift
-- The queues that differ, in any column, between the live rows and the
-- rebuild, each as its live row and its rebuilt row (NULL when absent); the
-- names compared as text, so that no operator for varchar in the app's schema
-- is a closer match than pg_catalog's.
SELECT COALESCE(l.name, r.name)::text AS name, pg_catalog.to_jsonb(l) AS live,
       pg_catalog.to_jsonb(r) AS replayed
FROM pg_temp.dbq_scratch_queue_live l
FULL JOIN pg_temp.dbq_scratch_queue r ON r.name::text = l.name::text
WHERE (l.*) IS DISTINCT FROM (r.*)
ORDER BY 1

-- name: stats_live_by_queue_and_state
-- How many jobs each queue holds waiting, running, failed and cancelled, exactly:
-- one read of each partial index (django_dbq_job_ready, django_dbq_job_leased,
-- django_dbq_job_failed).
SELECT queue_name, state, count(*) FROM django_dbq_job
WHERE state IN ('NEW', 'READY') GROUP BY 1, 2
UNION ALL
SELECT queue_name, state, count(*) FROM django_dbq_job
WHERE state IN ('PROCESSING', 'STOPPING') GROUP BY 1, 2
UNION ALL
SELECT queue_name, state, count(*) FROM django_dbq_job
WHERE state IN ('FAILED', 'CANCELLED') GROUP BY 1, 2

-- name: stats_job_pages
-- The projection's size in pages, as VACUUM and ANALYZE last measured it.
SELECT c.relpages FROM pg_catalog.pg_class c WHERE c.oid = 'django_dbq_job'::regclass

-- name: stats_completed_by_queue
-- How many COMPLETE jobs each queue holds, from `percent` of the projection's
-- pages picked at random (100: all, exactly), to be scaled up.
SELECT queue_name, count(*)
FROM django_dbq_job TABLESAMPLE SYSTEM (%(percent)s::float8)
WHERE state = 'COMPLETE'
GROUP BY 1

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

-- name: stats_paused
-- The paused queues: why, by whom, as which role, since when.
SELECT name, reason, by, role, since FROM django_dbq_queue WHERE paused ORDER BY name
