-- Installed by migration 0017: frozen copies of the functions it installs or
-- replaces in place, from events/sql/worker.sql as it was then.

-- dbq_claim_jobs_v4: as dbq_claim_jobs_v3, and a paused queue (a row of
-- django_dbq_queue with paused set, projections/sql/queues.sql) gives no jobs.
-- The pause is read as each claim starts, so every worker that claims with this
-- function honours a pause at its next claim, and a restart changes nothing; a
-- claim that started before the pause committed may still take its batch.
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
    WITH ready AS (
        SELECT j.id, j.created, j.name, j.next_task, j.workspace, j.queue_name,
               j.priority, j.run_after, j.version, j.state, j.attempts, j.head
        FROM @schema@.django_dbq_job j
        WHERE j.queue_name = p_queue_name
          AND j.state IN ('NEW', 'READY')
          AND (j.run_after IS NULL OR j.run_after <= now())
          AND (p_names IS NULL OR j.name = ANY(p_names))
        ORDER BY j.priority DESC, j.created
        LIMIT max_jobs
        FOR UPDATE SKIP LOCKED
    ), placed AS (
        -- In the order the claim index gave the rows (claim order; ties of
        -- priority and creation time as the index holds them): the batch's
        -- order, in the events and in the rows returned.
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


-- dbq_record_outcomes_v1: append one event per held job (task_done, completed,
-- failed, retried, stopping, released) in one statement; `events` is a JSON
-- array of {job_id, kind, payload}. Any other kind is refused (checked as each
-- held job's event is inserted; nothing is written for a job not held). The
-- row lock makes a concurrent lease expiry either wait for this statement or
-- win it, in which case the job is no longer held and is skipped. Returns the
-- ids of the jobs whose event was recorded.
CREATE OR REPLACE FUNCTION @schema@.dbq_record_outcomes_v1(p_key text, events jsonb)
RETURNS SETOF uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key_hash text := @schema@.dbq_lease_key_v1(p_key::text);
BEGIN
    RETURN QUERY
    WITH incoming AS (
        SELECT *
        FROM ROWS FROM (jsonb_to_recordset(events) AS (job_id uuid, kind text, payload jsonb))
            WITH ORDINALITY AS i(job_id, kind, payload, n)
    ), held AS (
        SELECT j.id, j.version, j.head
        FROM @schema@.django_dbq_job j
        WHERE j.id IN (SELECT i.job_id FROM incoming i)
          AND j.lease_key = key_hash
          AND j.state IN ('PROCESSING', 'STOPPING')
          AND j.lease_until > now()
        FOR NO KEY UPDATE
    )
    -- Each event's hash here rather than from the row trigger (seals.sql),
    -- chained from the head of the job's row, which this statement locks.
    INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload, at, hash)
    SELECT o.job_id, o.version, o.kind, o.payload, o.at, @schema@.dbq_event_hash_v1(
        o.head, o.job_id, o.version, o.kind, o.payload, o.at)
    FROM (
        -- OFFSET 0: each row's time is taken once, for its column and its hash.
        SELECT i.job_id, h.version + 1 AS version, h.head, i.n, i.payload,
               clock_timestamp() AS at, CASE
            WHEN i.kind IN ('task_done', 'completed', 'failed', 'retried', 'stopping', 'released')
                THEN i.kind
            ELSE @schema@.dbq_refuse_worker_kind_v1(i.kind::text)
            END AS kind
        FROM incoming i
        JOIN held h ON h.id = i.job_id
        ORDER BY i.n
        OFFSET 0
    ) o
    ORDER BY o.n
    RETURNING job_id;
END
$$;
