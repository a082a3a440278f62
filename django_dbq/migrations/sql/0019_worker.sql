-- Migration 0019: dbq_claim_jobs_v4 reads the two indexes of waiting jobs
-- (django_dbq_job_ready, django_dbq_job_scheduled) instead of one; same
-- arguments, same results. A frozen copy of events/sql/worker.sql's definition.

-- dbq_claim_jobs_v4: as dbq_claim_jobs_v3, and a paused queue (a row of
-- django_dbq_queue with paused set, projections/sql/queues.sql) gives no jobs.
-- The pause is read as each claim starts, so every worker that claims with this
-- function honours a pause at its next claim, and a restart changes nothing; a
-- claim that started before the pause committed may still take its batch.
-- Since migration 0019 the ready jobs come from two indexes, so that a claim reads
-- only jobs it may take, whatever the number of jobs scheduled for later:
-- django_dbq_job_ready holds the waiting jobs in claim order, those due from
-- their creation apart from those scheduled for later (run_after after created);
-- django_dbq_job_scheduled holds the latter by run_after, and gives the ones due
-- now. The claim takes up to max_jobs of each in claim order, locked, and keeps
-- the first max_jobs of both: django-db-queue's order (priority, then creation
-- time) over every due job. The due scheduled jobs are sorted for it, as many as
-- are due at once (few, but for a mass of jobs scheduled for the same time); the
-- rows it locks and does not keep are free again when it commits.
CREATE OR REPLACE FUNCTION @schema@.dbq_claim_jobs_v4(
    p_queue_name text, max_jobs integer, p_worker text, p_key text, p_host text, p_pid integer,
    lease_seconds float8, p_names text[] DEFAULT NULL
)
RETURNS TABLE (
    id uuid, created float8, modified float8, name text, state text, next_task text,
    workspace jsonb, queue_name text, priority smallint, run_after timestamptz,
    version integer, claimed_by text, lease_until float8, attempts integer,
    cancel_requested boolean, prior_state text, last_kind text
)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    key_hash text := @schema@.dbq_lease_key_v1(p_key::text);
    until timestamptz := @schema@.dbq_lease_until_v1(lease_seconds::float8);
BEGIN
    -- A paused queue gives no jobs (its row is looked up by its primary key).
    IF EXISTS (SELECT FROM @schema@.django_dbq_queue q WHERE q.name = p_queue_name AND q.paused) THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH due AS (
        -- Scheduled jobs whose time has come (django_dbq_job_scheduled).
        SELECT j.id, j.created, j.name, j.next_task, j.workspace, j.queue_name,
               j.priority, j.run_after, j.version, j.state, j.attempts, j.head
        FROM @schema@.django_dbq_job j
        WHERE j.queue_name = p_queue_name
          AND j.state IN ('NEW', 'READY')
          AND j.run_after > j.created
          AND j.run_after <= now()
          AND (p_names IS NULL OR j.name = ANY(p_names))
        ORDER BY j.priority DESC, j.created
        LIMIT max_jobs
        FOR UPDATE SKIP LOCKED
    ), waiting AS (
        -- The others, in claim order (django_dbq_job_ready). The test of run_after
        -- holds for all of them but one whose created a save moved past it.
        SELECT j.id, j.created, j.name, j.next_task, j.workspace, j.queue_name,
               j.priority, j.run_after, j.version, j.state, j.attempts, j.head
        FROM @schema@.django_dbq_job j
        WHERE j.queue_name = p_queue_name
          AND j.state IN ('NEW', 'READY')
          AND (j.run_after IS NOT NULL AND j.run_after > j.created) IS FALSE
          AND (j.run_after IS NULL OR j.run_after <= now())
          AND (p_names IS NULL OR j.name = ANY(p_names))
        ORDER BY j.priority DESC, j.created
        LIMIT max_jobs
        FOR UPDATE SKIP LOCKED
    ), ready AS (
        SELECT u.id, u.created, u.name, u.next_task, u.workspace, u.queue_name,
               u.priority, u.run_after, u.version, u.state, u.attempts, u.head
        FROM (
            SELECT d.*, 0 AS source, row_number() OVER () AS rank FROM due d
            UNION ALL
            SELECT w.*, 1, row_number() OVER () FROM waiting w
        ) u
        ORDER BY u.priority DESC, u.created, u.source, u.rank
        LIMIT max_jobs
    ), placed AS (
        -- In claim order (ties of priority and creation time as the indexes
        -- give them): the batch's order, in the events and in the rows returned.
        SELECT r.*, row_number() OVER () AS position,
               CASE WHEN r.version > 1 THEN (
                   SELECT e.kind FROM @schema@.django_dbq_jobevent e
                   WHERE e.job_id = r.id AND e.version = r.version) END AS last_kind
        FROM ready r
    ), claimed AS (
        -- Each event's hash here rather than from the row trigger (seals.sql),
        -- chained from the head of the job's row, which this claim locks.
        INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload, at, hash)
        SELECT c.id, c.version + 1, 'claimed', c.payload, c.at, @schema@.dbq_event_hash_v1(
            c.head, c.id, c.version + 1, 'claimed'::text, c.payload, c.at)
        FROM (
            -- OFFSET 0: each row's time is taken once, in order, for its column and
            -- its hash.
            SELECT p.id, p.version, p.head, p.position, clock_timestamp() AS at,
                   jsonb_build_object(
                       'worker', p_worker,
                       'host', p_host,
                       'pid', p_pid,
                       'lease_until', until,
                       'lease_key', key_hash,
                       'position', p.position) AS payload
            FROM placed p
            ORDER BY p.position
            OFFSET 0
        ) c
        ORDER BY c.position
        RETURNING job_id, at
    )
    SELECT p.id, extract(epoch FROM p.created)::float8, extract(epoch FROM c.at)::float8,
           p.name::text, 'PROCESSING'::text, p.next_task::text, p.workspace,
           p.queue_name::text, p.priority, p.run_after, p.version + 1, p_worker,
           extract(epoch FROM until)::float8,
           p.attempts, false, p.state::text, p.last_kind::text
    FROM placed p
    JOIN claimed c ON c.job_id = p.id
    ORDER BY p.position;
END
$$;
