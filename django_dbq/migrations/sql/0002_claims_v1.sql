-- The worker's statements on the ledger, as functions that run with the rights of
-- the tables' owner (SECURITY DEFINER). Claiming locks projection rows, which
-- PostgreSQL allows only to roles that may UPDATE the table; running these as the
-- owner lets a worker role do its work with no write right on the projection at
-- all (see the README's least-privilege setup). search_path is pinned to the one
-- the migration ran with, as a SECURITY DEFINER function must.
--
-- "Held" jobs are PROCESSING or STOPPING jobs whose claimed_by is the worker: a
-- worker only ever records events for jobs it still holds, so a worker whose
-- lease ran out cannot overwrite what the next worker does with the job.

-- dbq_claim_jobs_v1: claim up to `max_jobs` ready jobs of a queue, in claim order
-- (priority high to low, then oldest first), with a `claimed` event each. SKIP
-- LOCKED lets workers claim side by side without waiting on each other's rows; the
-- lease runs on the database clock. Returns the claimed rows as they are after the
-- claim, times as epoch seconds (float8 keeps microseconds, and is far cheaper for
-- the worker to read than timestamp text), and the state each job had before.
CREATE OR REPLACE FUNCTION dbq_claim_jobs_v1(
    p_queue_name text, max_jobs integer, p_worker text, p_host text, p_pid integer,
    lease_seconds float8
)
RETURNS TABLE (
    id uuid, created float8, modified float8, name text, state text, next_task text,
    workspace jsonb, queue_name text, priority smallint, run_after timestamptz,
    version integer, claimed_by text, lease_until float8, attempts integer,
    cancel_requested boolean, prior_state text
)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH ready AS (
        SELECT j.id, j.created, j.name, j.next_task, j.workspace, j.queue_name,
               j.priority, j.run_after, j.version, j.state, j.attempts
        FROM django_dbq_job j
        WHERE j.queue_name = p_queue_name
          AND j.state IN ('NEW', 'READY')
          AND (j.run_after IS NULL OR j.run_after <= now())
        ORDER BY j.priority DESC, j.created
        LIMIT max_jobs
        FOR UPDATE SKIP LOCKED
    ), claimed AS (
        INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)
        SELECT r.id, r.version + 1, 'claimed', jsonb_build_object(
            'worker', p_worker,
            'host', p_host,
            'pid', p_pid,
            'lease_until', now() + make_interval(secs => lease_seconds))
        FROM ready r
        ORDER BY r.priority DESC, r.created
        RETURNING job_id, at, payload
    )
    SELECT r.id, extract(epoch FROM r.created)::float8, extract(epoch FROM c.at)::float8,
           r.name::text, 'PROCESSING'::text, r.next_task::text, r.workspace,
           r.queue_name::text, r.priority, r.run_after, r.version + 1, p_worker,
           extract(epoch FROM (c.payload ->> 'lease_until')::timestamptz)::float8,
           r.attempts, false, r.state::text
    FROM ready r
    JOIN claimed c ON c.job_id = r.id
    ORDER BY r.priority DESC, r.created;
END
$$;


-- dbq_append_held_v1: append one event per held job (task_done, completed,
-- failed, stopping, released) in one statement; `events` is a JSON array of
-- {job_id, kind, payload}. The row lock makes a concurrent lease expiry either
-- wait for this statement or win it, in which case the job is no longer held and
-- is skipped. Returns the ids of the jobs whose event was recorded.
CREATE OR REPLACE FUNCTION dbq_append_held_v1(p_worker text, events jsonb)
RETURNS SETOF uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    RETURN QUERY
    WITH incoming AS (
        SELECT *
        FROM ROWS FROM (jsonb_to_recordset(events) AS (job_id uuid, kind text, payload jsonb))
            WITH ORDINALITY AS i(job_id, kind, payload, n)
    ), held AS (
        SELECT j.id, j.version
        FROM django_dbq_job j
        WHERE j.id IN (SELECT i.job_id FROM incoming i)
          AND j.claimed_by = p_worker
          AND j.state IN ('PROCESSING', 'STOPPING')
        FOR NO KEY UPDATE
    )
    INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)
    SELECT i.job_id, h.version + 1, i.kind, i.payload
    FROM incoming i
    JOIN held h ON h.id = i.job_id
    ORDER BY i.n
    RETURNING job_id;
END
$$;


-- dbq_renew_leases_v1: the heartbeat. Extend the lease of every given job the
-- worker holds to `lease_seconds` from now, so that a long task is not taken for
-- abandoned; returns the ids still held.
CREATE OR REPLACE FUNCTION dbq_renew_leases_v1(p_worker text, job_ids uuid[], lease_seconds float8)
RETURNS SETOF uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    RETURN QUERY
    WITH held AS (
        SELECT j.id, j.version
        FROM django_dbq_job j
        WHERE j.id = ANY(job_ids)
          AND j.claimed_by = p_worker
          AND j.state IN ('PROCESSING', 'STOPPING')
        FOR NO KEY UPDATE
    )
    INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)
    SELECT h.id, h.version + 1, 'lease_renewed', jsonb_build_object(
        'worker', p_worker,
        'lease_until', now() + make_interval(secs => lease_seconds))
    FROM held h
    RETURNING job_id;
END
$$;


-- dbq_expire_leases_v1: return to their queue up to `max_jobs` running jobs whose
-- lease has run out (their worker died or lost the database), with a
-- `lease_expired` event naming the old holder. Jobs imported as PROCESSING from
-- django-db-queue have no lease and count as run out.
CREATE OR REPLACE FUNCTION dbq_expire_leases_v1(p_worker text, max_jobs integer)
RETURNS SETOF uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    RETURN QUERY
    WITH lapsed AS (
        SELECT j.id, j.version, j.claimed_by, j.lease_until
        FROM django_dbq_job j
        WHERE j.state IN ('PROCESSING', 'STOPPING')
          AND (j.lease_until < now() OR j.lease_until IS NULL)
        ORDER BY j.lease_until NULLS FIRST
        LIMIT max_jobs
        FOR UPDATE SKIP LOCKED
    )
    INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)
    SELECT l.id, l.version + 1, 'lease_expired', jsonb_build_object(
        'worker', l.claimed_by, 'lease_until', l.lease_until, 'noticed_by', p_worker)
    FROM lapsed l
    RETURNING job_id;
END
$$;


-- dbq_append_events_v1: append one event per job at the job's next version
-- (job.save()'s `updated`); `events` is a JSON array of {job_id, kind, payload}.
-- Locking the projection rows first serialises writers of the same job, so a
-- concurrent writer waits and then reads the version this statement leaves.
CREATE OR REPLACE FUNCTION dbq_append_events_v1(events jsonb)
RETURNS TABLE (job_id uuid, version integer, at float8)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH incoming AS (
        SELECT *
        FROM ROWS FROM (jsonb_to_recordset(events) AS (job_id uuid, kind text, payload jsonb))
            WITH ORDINALITY AS i(job_id, kind, payload, n)
    ), current_version AS (
        SELECT j.id, j.version
        FROM django_dbq_job j
        WHERE j.id IN (SELECT i.job_id FROM incoming i)
        FOR NO KEY UPDATE
    ), appended AS (
        INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)
        SELECT i.job_id, c.version + 1, i.kind, i.payload
        FROM incoming i
        JOIN current_version c ON c.id = i.job_id
        ORDER BY i.n
        RETURNING job_id, version, at
    )
    SELECT a.job_id, a.version, extract(epoch FROM a.at)::float8 FROM appended a;
END
$$;
