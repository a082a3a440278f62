-- Named statements of the ledger's write side. Each appends events in one
-- statement; the ledger's statement trigger applies them to the projection.

-- name: events_insert_created
-- Append one `created` event (version 1) per new job, in the order given;
-- at = clock_timestamp() per row, so jobs created together keep their order.
-- The events come as one JSON array of {job_id, payload}; the times come back in
-- the same order (rows are inserted, and returned, in the order of ORDER BY).
INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)
SELECT e.job_id, 1, 'created', e.payload
FROM ROWS FROM (jsonb_to_recordset(%(events)s::jsonb) AS (job_id uuid, payload jsonb))
    WITH ORDINALITY AS e(job_id, payload, n)
ORDER BY e.n
RETURNING extract(epoch FROM at)::float8

-- name: events_insert_created_one
-- The same for one job (Job.objects.create, save() of a new job): the server
-- parses and plans a VALUES row faster than the JSON array's query (pgbench,
-- unprepared: 0.50 against 0.57 ms per create, commit included).
INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)
VALUES (%(job_id)s, 1, 'created', %(payload)s::jsonb)
RETURNING extract(epoch FROM at)::float8

-- name: events_append
-- Append one event per job at the job's next version (sql/claims_v1.sql); the
-- events come as one JSON array of {job_id, kind, payload}.
SELECT * FROM dbq_append_events_v1(%(events)s::jsonb)

-- name: events_delete_old_jobs
-- The retention path: whole histories of finished jobs created before a time.
SELECT dbq_delete_old_jobs_v1(%(created_before)s)

-- name: jobs_cancel
-- Cancel jobs: waiting ones at once, running ones after their current task.
SELECT * FROM dbq_cancel_jobs_v1(%(job_ids)s::uuid[], %(reason)s)

-- name: jobs_requeue
-- Put FAILED and CANCELLED jobs back in their queue.
SELECT * FROM dbq_requeue_jobs_v1(%(job_ids)s::uuid[], %(reason)s)
