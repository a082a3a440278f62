-- Named statements of the ledger's write side. Each appends events in one
-- statement; the ledger's statement trigger applies them to the projection.
-- The functions are those of sql/ledger.sql and sql/operations.sql. Every
-- argument is cast to its parameter's exact type, so that no overload planted in
-- a schema of the search_path is a closer match (tests/test_schema.py checks).

-- name: events_insert_created
-- Enqueue jobs: one `created` event (version 1) per new job, in the order given:
-- the job ids, the JSON array of their distinct payloads, and for each job the
-- position of its payload in that array; their times come back as epoch
-- seconds in the same order.
SELECT * FROM dbq_create_jobs_v3(%(job_ids)s::uuid[], %(payloads)s::jsonb, %(which)s::integer[])

-- name: events_insert_created_one
-- The same for one job (Job.objects.create, save() of a new job), without the
-- JSON array.
SELECT dbq_create_job_v2(%(job_id)s::uuid, %(payload)s::jsonb)

-- name: events_insert_unique_created
-- Enqueue jobs of which some carry a unique key (sql/unique.sql): the same
-- JSON array; per event, in order, its job id, the time of its `created` event
-- (NULL for a duplicate), the job that holds its key, and whether that job was
-- replaced (always false here).
SELECT * FROM dbq_create_unique_jobs_v1(%(events)s::jsonb)

-- name: events_insert_unique_replacing
-- The same, and the waiting job holding each duplicate's key takes its
-- workspace, run_after and priority (an `updated` event).
SELECT * FROM dbq_replace_unique_jobs_v1(%(events)s::jsonb)

-- name: events_update
-- job.save(): one `updated` event per job at the job's next version; the events
-- come as one JSON array of {job_id, kind, payload}.
SELECT * FROM dbq_update_jobs_v2(%(events)s::jsonb)

-- name: events_append
-- Any event, one per job at the job's next version: a plain INSERT that needs
-- the tables' owner (no other role may insert into the ledger). Locking the
-- projection rows first serialises writers of the same job.
WITH incoming AS (
    SELECT *
    FROM ROWS FROM (jsonb_to_recordset(%(events)s::jsonb) AS (job_id uuid, kind text, payload jsonb))
        WITH ORDINALITY AS i(job_id, kind, payload, n)
), current_version AS (
    SELECT j.id, j.version
    FROM django_dbq_job j
    WHERE j.id IN (SELECT i.job_id FROM incoming i)
    FOR NO KEY UPDATE
)
INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)
SELECT i.job_id, c.version + 1, i.kind, i.payload
FROM incoming i
JOIN current_version c ON c.id = i.job_id
ORDER BY i.n
RETURNING job_id, version, extract(epoch FROM at)::float8

-- name: events_delete_old_jobs
-- The retention path, one batch: of the `max_jobs` jobs after `after_id` in id
-- order, the whole histories of the finished ones created before a time, with
-- unsigned retirement records of the sealed events among them (proof.sql).
-- Returns how many went and the batch's last id (NULL: no job was left).
SELECT * FROM dbq_delete_old_jobs_v5(
    %(created_before)s::timestamptz, %(after_id)s::uuid, %(max_jobs)s::integer
)

-- name: events_last_job_id
-- The greatest job id now: a retention run goes no further, so jobs enqueued
-- while it runs do not keep it going. The table named with its schema (as
-- proof.sql's unsigned_retired), so that no TEMP table of the session (a pooled
-- server session another client left one in) ends the run early.
SELECT id FROM @schema@.django_dbq_job ORDER BY id DESC LIMIT 1

-- name: jobs_cancel
-- Cancel jobs: waiting ones at once, running ones after their current task.
SELECT * FROM dbq_cancel_jobs_v2(%(job_ids)s::uuid[], %(reason)s::text)

-- name: jobs_requeue
-- Put FAILED and CANCELLED jobs back in their queue.
SELECT * FROM dbq_requeue_jobs_v2(%(job_ids)s::uuid[], %(reason)s::text)

-- name: jobs_release
-- Return running jobs whose worker is gone to their queue before their lease runs out.
SELECT * FROM dbq_release_jobs_v1(%(job_ids)s::uuid[], %(reason)s::text)

-- name: queues_pause
-- Pause a queue (a `paused` event in the queue ledger) unless it is paused
-- already; returns the event's version and time, or no row.
SELECT * FROM dbq_pause_queue_v1(%(queue_name)s::text, %(reason)s::text, %(by)s::text)

-- name: queues_resume
-- Resume a paused queue (a `resumed` event; its idle workers are woken);
-- returns the event's version and time, or no row when it was not paused.
SELECT * FROM dbq_resume_queue_v1(%(queue_name)s::text, %(by)s::text)

-- name: schedules_enqueue_ticks
-- Periodic jobs: enqueue the due ticks of a schedule that no worker has
-- enqueued yet (one `created` event each, the tick in its payload) and move
-- the schedule's last tick; the ticks come as one JSON array of {tick, job_id,
-- payload}. Returns the jobs created and their ticks (epoch seconds). With no
-- tick, registers a schedule seen for the first time.
SELECT job_id, extract(epoch FROM tick)::float8 FROM dbq_enqueue_ticks_v1(%(name)s::text, %(ticks)s::jsonb)

-- name: schedules_cursors
-- Periodic jobs: for each schedule named, the time after which its next tick
-- is enqueued (its last tick, or when it was first seen), as epoch seconds.
SELECT s.name::text, extract(epoch FROM COALESCE(s.last_tick, s.since))::float8
FROM django_dbq_schedule s
WHERE s.name::text = ANY(%(names)s::text[])
