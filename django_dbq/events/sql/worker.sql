-- The worker's statements on the ledger, as functions that run with the rights of
-- the tables' owner (SECURITY DEFINER), granted to the worker role. Claiming locks
-- projection rows, which PostgreSQL allows only to roles that may UPDATE the
-- table; running these as the owner lets a worker role do its work with no write
-- right on either table. What is installed now (migration 0013); @schema@ and the
-- search_path rule are explained at the top of projections/sql/apply.sql.
--
-- Migration 0008 superseded dbq_claim_jobs_v2, dbq_record_and_claim_v1 and
-- dbq_expire_leases_v2 (by _v3, _v2 and _v3: claims record their place in the
-- batch, and a lost worker's job counts an attempt). Migration 0013 superseded
-- dbq_claim_jobs_v3 and dbq_record_and_claim_v2 (by _v4 and _v3: a paused
-- queue gives no jobs). The superseded functions stay, for workers of the
-- previous releases while a rolling deploy replaces them; workers that still
-- call them do not honour pauses.
--
-- A worker proves which jobs it holds with a secret key of its own (`p_key`,
-- random, at least 32 characters, never stored): a claim records the key's
-- SHA-256 in the `claimed` event and the job's row (lease_key), and the worker's
-- later events for the job are accepted only with the key whose hash the row
-- holds, while the lease is live. Another worker, which can read claimed_by and
-- lease_key, can neither record outcomes for the job nor keep its lease alive.
-- Lease times are computed here, from `lease_seconds` capped to 1..3600.

-- dbq_lease_key_v1: the hash under which a worker's key is recorded; refuses a
-- key too short to be a secret.
CREATE OR REPLACE FUNCTION @schema@.dbq_lease_key_v1(p_key text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_key IS NULL OR length(p_key) < 32 THEN
        RAISE EXCEPTION 'django_dbq: a worker key must be a secret of at least 32 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN encode(sha256(convert_to(p_key, 'UTF8')), 'hex');
END
$$;


-- dbq_lease_until_v1: when a lease taken or renewed now runs out: `lease_seconds`
-- from now, at least 1 s and at most an hour (a heartbeat renews a lease every
-- third of it, so no task needs a longer one; NaN and infinity count as an hour).
CREATE OR REPLACE FUNCTION @schema@.dbq_lease_until_v1(lease_seconds float8)
RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT now() + make_interval(secs => least(greatest(COALESCE(lease_seconds, 30), 1), 3600))
$$;


-- dbq_claim_jobs_v2: claim up to `max_jobs` ready jobs of a queue, in claim order
-- (priority high to low, then oldest first), with a `claimed` event each; with
-- `p_names`, only jobs of those names (the names the worker's settings.JOBS
-- knows: during a rolling deploy a job of a new name waits for a worker that
-- can run it, instead of failing on an old one). SKIP
-- LOCKED lets workers claim side by side without waiting on each other's rows; the
-- lease runs on the database clock. Returns the claimed rows as they are after the
-- claim, times as epoch seconds (float8 keeps microseconds, and is far cheaper for
-- the worker to read than timestamp text), and the state each job had before.
CREATE OR REPLACE FUNCTION @schema@.dbq_claim_jobs_v2(
    p_queue_name text, max_jobs integer, p_worker text, p_key text, p_host text, p_pid integer,
    lease_seconds float8, p_names text[] DEFAULT NULL
)
RETURNS TABLE (
    id uuid, created float8, modified float8, name text, state text, next_task text,
    workspace jsonb, queue_name text, priority smallint, run_after timestamptz,
    version integer, claimed_by text, lease_until float8, attempts integer,
    cancel_requested boolean, prior_state text
)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    key_hash text := @schema@.dbq_lease_key_v1(p_key::text);
    until timestamptz := @schema@.dbq_lease_until_v1(lease_seconds::float8);
BEGIN
    RETURN QUERY
    WITH ready AS (
        SELECT j.id, j.created, j.name, j.next_task, j.workspace, j.queue_name,
               j.priority, j.run_after, j.version, j.state, j.attempts
        FROM @schema@.django_dbq_job j
        WHERE j.queue_name = p_queue_name
          AND j.state IN ('NEW', 'READY')
          AND (j.run_after IS NULL OR j.run_after <= now())
          AND (p_names IS NULL OR j.name = ANY(p_names))
        ORDER BY j.priority DESC, j.created
        LIMIT max_jobs
        FOR UPDATE SKIP LOCKED
    ), claimed AS (
        INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
        SELECT r.id, r.version + 1, 'claimed', jsonb_build_object(
            'worker', p_worker,
            'host', p_host,
            'pid', p_pid,
            'lease_until', until,
            'lease_key', key_hash)
        FROM ready r
        ORDER BY r.priority DESC, r.created
        RETURNING job_id, at
    )
    SELECT r.id, extract(epoch FROM r.created)::float8, extract(epoch FROM c.at)::float8,
           r.name::text, 'PROCESSING'::text, r.next_task::text, r.workspace,
           r.queue_name::text, r.priority, r.run_after, r.version + 1, p_worker,
           extract(epoch FROM until)::float8,
           r.attempts, false, r.state::text
    FROM ready r
    JOIN claimed c ON c.job_id = r.id
    ORDER BY r.priority DESC, r.created;
END
$$;


-- dbq_claim_jobs_v3: as dbq_claim_jobs_v2, and each `claimed` event records the
-- job's place in the batch (`position`, 1 for the first; the worker runs a
-- batch in that order), which tells a lost worker's running job from the jobs
-- of its batch that it had not started (dbq_expire_leases_v3). Each row also
-- says how the job came back to its queue (`last_kind`, the kind of its latest
-- event; NULL for a new job): before it runs a job that came back with
-- lease_expired or retried, the worker records the outcomes it has pending, so
-- that should this job take the worker down, it is the first of the lapsed
-- jobs, and the one that counts the attempt.
CREATE OR REPLACE FUNCTION @schema@.dbq_claim_jobs_v3(
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
    RETURN QUERY
    WITH ready AS (
        SELECT j.id, j.created, j.name, j.next_task, j.workspace, j.queue_name,
               j.priority, j.run_after, j.version, j.state, j.attempts
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
        INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
        SELECT p.id, p.version + 1, 'claimed', jsonb_build_object(
            'worker', p_worker,
            'host', p_host,
            'pid', p_pid,
            'lease_until', until,
            'lease_key', key_hash,
            'position', p.position)
        FROM placed p
        ORDER BY p.position
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


-- dbq_refuse_worker_kind_v1: the error for an event kind a worker may not record.
CREATE OR REPLACE FUNCTION @schema@.dbq_refuse_worker_kind_v1(kind text)
RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'django_dbq: a worker records task_done, completed, failed, retried, stopping or released, not %', COALESCE(kind, 'another kind')
        USING ERRCODE = 'insufficient_privilege';
END
$$;


-- dbq_record_and_claim_v1: the worker's loop in one statement: record the
-- outcomes of the batch it ran (as dbq_record_outcomes_v1), then claim the next
-- batch (as dbq_claim_jobs_v2), in one round trip and one commit. One statement,
-- so that it can be bound and prepared by the server (server_side_binding,
-- prepare_threshold), which keeps the worker's key out of the statement text
-- that pg_stat_activity shows. Rows with `recorded` true carry only the id of a
-- job whose outcome was recorded; the others are the claimed jobs.
CREATE OR REPLACE FUNCTION @schema@.dbq_record_and_claim_v1(
    p_key text, events jsonb, p_queue_name text, max_jobs integer, p_worker text, p_host text,
    p_pid integer, lease_seconds float8, p_names text[] DEFAULT NULL
)
RETURNS TABLE (
    recorded boolean, id uuid, created float8, modified float8, name text, state text,
    next_task text, workspace jsonb, queue_name text, priority smallint,
    run_after timestamptz, version integer, claimed_by text, lease_until float8,
    attempts integer, cancel_requested boolean, prior_state text
)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF jsonb_array_length(events) > 0 THEN
        RETURN QUERY
        SELECT true, r.r, NULL::float8, NULL::float8, NULL::text, NULL::text, NULL::text,
               NULL::jsonb, NULL::text, NULL::smallint, NULL::timestamptz, NULL::integer,
               NULL::text, NULL::float8, NULL::integer, NULL::boolean, NULL::text
        FROM @schema@.dbq_record_outcomes_v1(p_key::text, events::jsonb) r;
    END IF;
    RETURN QUERY
    SELECT false, c.*
    FROM @schema@.dbq_claim_jobs_v2(
        p_queue_name::text, max_jobs::integer, p_worker::text, p_key::text, p_host::text,
        p_pid::integer, lease_seconds::float8, p_names::text[]) c;
END
$$;


-- dbq_record_and_claim_v2: as dbq_record_and_claim_v1, claiming with
-- dbq_claim_jobs_v3.
CREATE OR REPLACE FUNCTION @schema@.dbq_record_and_claim_v2(
    p_key text, events jsonb, p_queue_name text, max_jobs integer, p_worker text, p_host text,
    p_pid integer, lease_seconds float8, p_names text[] DEFAULT NULL
)
RETURNS TABLE (
    recorded boolean, id uuid, created float8, modified float8, name text, state text,
    next_task text, workspace jsonb, queue_name text, priority smallint,
    run_after timestamptz, version integer, claimed_by text, lease_until float8,
    attempts integer, cancel_requested boolean, prior_state text, last_kind text
)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF jsonb_array_length(events) > 0 THEN
        RETURN QUERY
        SELECT true, r.r, NULL::float8, NULL::float8, NULL::text, NULL::text, NULL::text,
               NULL::jsonb, NULL::text, NULL::smallint, NULL::timestamptz, NULL::integer,
               NULL::text, NULL::float8, NULL::integer, NULL::boolean, NULL::text, NULL::text
        FROM @schema@.dbq_record_outcomes_v1(p_key::text, events::jsonb) r;
    END IF;
    RETURN QUERY
    SELECT false, c.*
    FROM @schema@.dbq_claim_jobs_v3(
        p_queue_name::text, max_jobs::integer, p_worker::text, p_key::text, p_host::text,
        p_pid::integer, lease_seconds::float8, p_names::text[]) c;
END
$$;


-- dbq_record_and_claim_v3: as dbq_record_and_claim_v2, claiming with
-- dbq_claim_jobs_v4: the outcomes are recorded whether or not the queue is
-- paused, and a paused queue gives no jobs.
CREATE OR REPLACE FUNCTION @schema@.dbq_record_and_claim_v3(
    p_key text, events jsonb, p_queue_name text, max_jobs integer, p_worker text, p_host text,
    p_pid integer, lease_seconds float8, p_names text[] DEFAULT NULL
)
RETURNS TABLE (
    recorded boolean, id uuid, created float8, modified float8, name text, state text,
    next_task text, workspace jsonb, queue_name text, priority smallint,
    run_after timestamptz, version integer, claimed_by text, lease_until float8,
    attempts integer, cancel_requested boolean, prior_state text, last_kind text
)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF jsonb_array_length(events) > 0 THEN
        RETURN QUERY
        SELECT true, r.r, NULL::float8, NULL::float8, NULL::text, NULL::text, NULL::text,
               NULL::jsonb, NULL::text, NULL::smallint, NULL::timestamptz, NULL::integer,
               NULL::text, NULL::float8, NULL::integer, NULL::boolean, NULL::text, NULL::text
        FROM @schema@.dbq_record_outcomes_v1(p_key::text, events::jsonb) r;
    END IF;
    RETURN QUERY
    SELECT false, c.*
    FROM @schema@.dbq_claim_jobs_v4(
        p_queue_name::text, max_jobs::integer, p_worker::text, p_key::text, p_host::text,
        p_pid::integer, lease_seconds::float8, p_names::text[]) c;
END
$$;


-- Superseded by dbq_save_held_v2 (migration 0011); kept for the workers of the
-- previous release while a rolling deploy replaces them.
-- dbq_save_held_v1: job.save() inside a task, for the job its worker holds:
-- one `updated` event of the job's fields per held job (as dbq_update_jobs_v1,
-- but only for jobs claimed with `p_key` under a live lease), so that the worker
-- role saves the job it runs and no other. Returns what dbq_update_jobs_v1 does.
CREATE OR REPLACE FUNCTION @schema@.dbq_save_held_v1(p_key text, events jsonb)
RETURNS TABLE (job_id uuid, version integer, at float8)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY SELECT * FROM @schema@.dbq_append_updates_v1(
        events::jsonb, @schema@.dbq_lease_key_v1(p_key::text));
END
$$;


-- dbq_save_held_v2: dbq_save_held_v1 through dbq_append_updates_v2, so that a
-- task's save may also set `created`.
CREATE OR REPLACE FUNCTION @schema@.dbq_save_held_v2(p_key text, events jsonb)
RETURNS TABLE (job_id uuid, version integer, at float8)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY SELECT * FROM @schema@.dbq_append_updates_v2(
        events::jsonb, @schema@.dbq_lease_key_v1(p_key::text));
END
$$;


-- dbq_save_failed_v1: what the failure and post-task hooks changed in jobs this
-- worker has just failed, one `updated` event per job (django-db-queue saved
-- the job after its hooks; here the hooks run once `failed` is recorded, when
-- the worker no longer holds the job). Only for a job still FAILED whose last
-- claim was made with `p_key`, failed by that worker itself since (a hook's own
-- save may come between; a requeue, a change of state or an expiry's failure
-- may not), and only until the lease it last held would have run out. The
-- fields are those of a save, without `state`. `events` is a JSON array of {job_id, payload}; returns what
-- dbq_update_jobs_v2 does.
CREATE OR REPLACE FUNCTION @schema@.dbq_save_failed_v1(p_key text, events jsonb)
RETURNS TABLE (job_id uuid, version integer, at float8)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    key_hash text := @schema@.dbq_lease_key_v1(p_key::text);
BEGIN
    RETURN QUERY
    WITH incoming AS (
        SELECT *
        FROM ROWS FROM (jsonb_to_recordset(events) AS (job_id uuid, payload jsonb))
            WITH ORDINALITY AS i(job_id, payload, n)
    ), failed AS (
        SELECT j.id, j.version
        FROM @schema@.django_dbq_job j
        WHERE j.id IN (SELECT i.job_id FROM incoming i) AND j.state = 'FAILED'
        FOR NO KEY UPDATE
    ), mine AS (
        SELECT f.id, f.version
        FROM failed f
        CROSS JOIN LATERAL (
            SELECT e.version, e.payload ->> 'lease_key' AS lease_key
            FROM @schema@.django_dbq_jobevent e
            WHERE e.job_id = f.id AND e.kind = 'claimed'
            ORDER BY e.version DESC
            LIMIT 1
        ) c
        WHERE c.lease_key = key_hash
          -- Since that claim: this worker's own `failed` (not an expiry's, which
          -- notes who noticed), and nothing but its leases, a stop, a pending
          -- cancellation and saves that kept the state.
          AND EXISTS (
              SELECT FROM @schema@.django_dbq_jobevent e
              WHERE e.job_id = f.id AND e.version > c.version AND e.kind = 'failed'
                AND NOT e.payload ? 'noticed_by')
          AND NOT EXISTS (
              SELECT FROM @schema@.django_dbq_jobevent e
              WHERE e.job_id = f.id AND e.version > c.version
                AND (e.kind NOT IN ('lease_renewed', 'stopping', 'cancel_requested', 'updated', 'failed')
                     OR (e.kind = 'updated' AND e.payload ? 'state')
                     OR (e.kind = 'failed' AND e.payload ? 'noticed_by')))
          -- And while the lease it last held would still run.
          AND now() < (
              SELECT max((e.payload ->> 'lease_until')::timestamptz)
              FROM @schema@.django_dbq_jobevent e
              WHERE e.job_id = f.id AND e.version >= c.version
                AND e.kind IN ('claimed', 'lease_renewed'))
    ), appended AS (
        INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
        SELECT i.job_id, m.version + 1, 'updated', CASE
            WHEN NOT i.payload ? 'state' AND @schema@.dbq_is_saved_fields_v1(i.payload)
                THEN i.payload
            WHEN i.payload ? 'state'
                THEN @schema@.dbq_refuse_save_v1('a change of state', i.payload::jsonb)
            ELSE @schema@.dbq_refuse_save_v1('updated', i.payload::jsonb)
            END
        FROM incoming i
        JOIN mine m ON m.id = i.job_id
        ORDER BY i.n
        RETURNING job_id, version, at
    )
    SELECT a.job_id, a.version::integer, extract(epoch FROM a.at)::float8 FROM appended a;
END
$$;


-- dbq_renew_leases_v2: the heartbeat. Extend the lease of every given job the
-- worker holds to `lease_seconds` from now, so that a long task is not taken for
-- abandoned; returns the ids still held.
CREATE OR REPLACE FUNCTION @schema@.dbq_renew_leases_v2(p_key text, job_ids uuid[], lease_seconds float8)
RETURNS SETOF uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key_hash text := @schema@.dbq_lease_key_v1(p_key::text);
    until timestamptz := @schema@.dbq_lease_until_v1(lease_seconds::float8);
BEGIN
    RETURN QUERY
    WITH held AS (
        SELECT j.id, j.version, j.claimed_by
        FROM @schema@.django_dbq_job j
        WHERE j.id = ANY(job_ids)
          AND j.lease_key = key_hash
          AND j.state IN ('PROCESSING', 'STOPPING')
          AND j.lease_until > now()
        FOR NO KEY UPDATE
    )
    INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
    SELECT h.id, h.version + 1, 'lease_renewed',
           jsonb_build_object('worker', h.claimed_by, 'lease_until', until)
    FROM held h
    RETURNING job_id;
END
$$;


-- dbq_expire_leases_v2: return to their queue up to `max_jobs` running jobs whose
-- lease has run out (their worker died or lost the database), with a
-- `lease_expired` event naming the old holder and the worker that noticed.
-- Jobs imported as PROCESSING from django-db-queue have no lease and count as
-- run out.
CREATE OR REPLACE FUNCTION @schema@.dbq_expire_leases_v2(p_worker text, max_jobs integer)
RETURNS SETOF uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
    WITH lapsed AS (
        SELECT j.id, j.version, j.claimed_by, j.lease_until
        FROM @schema@.django_dbq_job j
        WHERE j.state IN ('PROCESSING', 'STOPPING')
          AND (j.lease_until < now() OR j.lease_until IS NULL)
        ORDER BY j.lease_until NULLS FIRST
        LIMIT max_jobs
        FOR UPDATE SKIP LOCKED
    )
    INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
    SELECT l.id, l.version + 1, 'lease_expired', jsonb_build_object(
        'worker', l.claimed_by, 'lease_until', l.lease_until, 'noticed_by', p_worker)
    FROM lapsed l
    RETURNING job_id;
END
$$;


-- Superseded by dbq_expire_leases_v4 (migration 0011); kept for the workers of
-- the previous release while a rolling deploy replaces them.
-- dbq_expire_leases_v3: as dbq_expire_leases_v2, and a lost worker's job counts
-- an attempt, so that a task that kills its process (a segfault, an OOM kill,
-- os._exit) is not run forever. Of the lapsed jobs a worker held (one key), the
-- first of its batch (the lowest `position` of their claims) is the one it ran
-- when it was lost (or had just finished, its outcome not yet recorded): it is
-- `retried` with a WorkerLost error and its job's backoff, or, once it has had
-- as many attempts as its rule allows, `failed` with that error. The others of
-- the batch were not started: `lease_expired`, no attempt counted, as are a
-- job in STOPPING (its worker was being stopped: the loss is the operator's),
-- a job claimed by a worker of the previous release (no position) while others
-- of its batch lapsed too, and a job without a key (imported or created as
-- PROCESSING). A worker's lapsed jobs are taken together, up to `max_jobs`
-- workers' at a time (and the jobs without a key), and a batch of which
-- another statement holds a job is left for a later call rather than waited
-- for, so that one batch is judged once, as a whole, whichever worker notices
-- it, and no heartbeat waits on a lock. `rules` is {job name: {"limit": n,
-- "delays": [seconds before attempt 1, 2, ...]}} from the noticing worker's
-- settings.JOBS, with "jitter": false for a job whose backoff is not random;
-- past its list, or for a name it does not know (limit 1), the wait is
-- 5 * 2^attempts s, at most an hour. Waits (at most a day) are jittered here,
-- by 0.5 to 1.5, so that the jobs of one outage do not all come back at once;
-- a value that is not a number counts as missing.
CREATE OR REPLACE FUNCTION @schema@.dbq_expire_leases_v3(
    p_worker text, max_jobs integer, rules jsonb DEFAULT '{}'::jsonb
)
RETURNS TABLE (job_id uuid, kind text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH lost_keys AS (
        SELECT DISTINCT j.lease_key
        FROM @schema@.django_dbq_job j
        WHERE j.state IN ('PROCESSING', 'STOPPING')
          AND (j.lease_until < now() OR j.lease_until IS NULL)
        LIMIT max_jobs
    ), seen AS (
        -- The lapsed jobs of those keys, as this statement's snapshot has them.
        SELECT j.id, j.lease_key
        FROM @schema@.django_dbq_job j
        WHERE j.state IN ('PROCESSING', 'STOPPING')
          AND (j.lease_until < now() OR j.lease_until IS NULL)
          AND (j.lease_key IN (SELECT k.lease_key FROM lost_keys k)
               OR (j.lease_key IS NULL AND EXISTS (SELECT FROM lost_keys k WHERE k.lease_key IS NULL)))
    ), locked AS (
        -- Skipping what another statement holds: a heartbeat never waits here
        -- (behind an application's open transaction that saved a running job,
        -- it would stop renewing its own worker's leases).
        SELECT j.id, j.version, j.claimed_by, j.lease_until, j.lease_key, j.state, j.name,
               j.attempts
        FROM @schema@.django_dbq_job j
        WHERE j.id IN (SELECT s.id FROM seen s)
          AND j.state IN ('PROCESSING', 'STOPPING')
          AND (j.lease_until < now() OR j.lease_until IS NULL)
        ORDER BY j.id
        FOR UPDATE SKIP LOCKED
    ), whole AS (
        -- The keys all of whose lapsed jobs this statement holds; a batch with a
        -- job held elsewhere (by another noticing worker, say) waits for a later
        -- call, so that it is judged once, as a whole.
        SELECT s.lease_key
        FROM seen s
        LEFT JOIN locked l ON l.id = s.id
        WHERE s.lease_key IS NOT NULL
        GROUP BY s.lease_key
        HAVING count(l.id) = count(*)
    ), lapsed AS (
        SELECT l.*
        FROM locked l
        WHERE l.lease_key IS NULL OR l.lease_key IN (SELECT w.lease_key FROM whole w)
    ), placed AS (
        SELECT l.*, c.position,
               count(*) OVER (PARTITION BY l.lease_key) AS lost_together,
               min(c.position) OVER (PARTITION BY l.lease_key) AS first_position
        FROM lapsed l
        LEFT JOIN LATERAL (
            SELECT (e.payload ->> 'position')::integer AS position
            FROM @schema@.django_dbq_jobevent e
            WHERE e.job_id = l.id AND e.kind = 'claimed'
            ORDER BY e.version DESC
            LIMIT 1
        ) c ON l.lease_key IS NOT NULL
    ), judged AS (
        SELECT p.*,
               COALESCE(p.lease_key IS NOT NULL AND p.state = 'PROCESSING'
                        AND (p.position = p.first_position OR p.lost_together = 1), false) AS blamed,
               greatest(CASE WHEN jsonb_typeof(rules -> p.name -> 'limit') = 'number'
                             THEN least((rules -> p.name ->> 'limit')::numeric, 1000)::integer
                        END, 1) AS attempt_limit,
               least(greatest(COALESCE(
                   CASE WHEN jsonb_typeof(rules -> p.name -> 'delays' -> p.attempts) = 'number'
                        THEN (rules -> p.name -> 'delays' ->> p.attempts)::float8 END,
                   least(5 * power(2, least(p.attempts, 20)), 3600)), 0), 86400)
                   * CASE WHEN COALESCE(rules -> p.name -> 'jitter', 'true') = 'false' THEN 1
                          ELSE 0.5 + random() END AS delay
        FROM placed p
    )
    INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
    SELECT d.id, d.version + 1,
           CASE WHEN NOT d.blamed THEN 'lease_expired'
                WHEN d.attempts + 1 > d.attempt_limit THEN 'failed'
                ELSE 'retried' END,
           CASE WHEN NOT d.blamed THEN jsonb_build_object(
                    'worker', d.claimed_by, 'lease_until', d.lease_until, 'noticed_by', p_worker)
           ELSE jsonb_build_object(
                    'worker', d.claimed_by, 'lease_until', d.lease_until, 'noticed_by', p_worker,
                    'error', jsonb_build_object(
                        'type', 'django_dbq.exceptions.WorkerLost',
                        'message', format(
                            'the worker %s stopped renewing its lease while it ran this job; '
                            'the task may have ended its process (a crash, an out-of-memory '
                            'kill, os._exit) or the worker lost the database; attempt %s of %s',
                            d.claimed_by, d.attempts + 1, d.attempt_limit + 1),
                        'traceback', ''),
                    'attempt', d.attempts + 1)
                || CASE WHEN d.attempts + 1 > d.attempt_limit THEN '{}'::jsonb
                   ELSE jsonb_build_object('run_after', now() + make_interval(secs => d.delay))
                   END
           END
    FROM judged d
    ORDER BY d.id
    RETURNING job_id, kind::text;
END
$$;


-- dbq_expire_leases_v4: return the jobs whose lease lapsed to their queue. A lost
-- worker's job counts an attempt, so that a task that kills its process (a segfault, an OOM kill,
-- os._exit) is not run forever. Of the lapsed jobs a worker held (one key), the
-- first of its batch (the lowest `position` of their claims) is the one it ran
-- when it was lost (or had just finished, its outcome not yet recorded): it is
-- `retried` with a WorkerLost error and its job's backoff, or, once it has had
-- as many attempts as its rule allows, `failed` with that error. The others of
-- the batch were not started: `lease_expired`, no attempt counted, as are a
-- job in STOPPING (its worker was being stopped: the loss is the operator's),
-- a job claimed by a worker of the previous release (no position) while others
-- of its batch lapsed too, and a job without a key (imported or created as
-- PROCESSING). A worker's lapsed jobs are taken together, up to `max_jobs`
-- workers' at a time, and up to `max_jobs` jobs without a key besides (in
-- v3 every job without a key came in the same statement: an application that
-- created many jobs PROCESSING made each heartbeat's expiry slow enough to stop
-- its own worker's renewals), and a batch of which
-- another statement holds a job is left for a later call rather than waited
-- for, so that one batch is judged once, as a whole, whichever worker notices
-- it, and no heartbeat waits on a lock. `rules` is {job name: {"limit": n,
-- "delays": [seconds before attempt 1, 2, ...]}} from the noticing worker's
-- settings.JOBS, with "jitter": false for a job whose backoff is not random;
-- past its list, or for a name it does not know (limit 1), the wait is
-- 5 * 2^attempts s, at most an hour. Waits (at most a day) are jittered here,
-- by 0.5 to 1.5, so that the jobs of one outage do not all come back at once;
-- a value that is not a number counts as missing.
CREATE OR REPLACE FUNCTION @schema@.dbq_expire_leases_v4(
    p_worker text, max_jobs integer, rules jsonb DEFAULT '{}'::jsonb
)
RETURNS TABLE (job_id uuid, kind text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH lost_keys AS (
        -- A claim always sets lease_until: a lost worker's jobs have lapsed.
        SELECT DISTINCT j.lease_key
        FROM @schema@.django_dbq_job j
        WHERE j.state IN ('PROCESSING', 'STOPPING')
          AND j.lease_until < now() AND j.lease_key IS NOT NULL
        LIMIT max_jobs
    ), keyless AS (
        -- Imported, created PROCESSING or STOPPING (no lease), or claimed by a
        -- release before keys (a lapsed lease): never blamed, so no batch to
        -- keep whole; each branch reads at most max_jobs index entries.
        (SELECT j.id
         FROM @schema@.django_dbq_job j
         WHERE j.state IN ('PROCESSING', 'STOPPING') AND j.lease_until IS NULL
           AND j.lease_key IS NULL
         LIMIT max_jobs)
        UNION ALL
        (SELECT j.id
         FROM @schema@.django_dbq_job j
         WHERE j.state IN ('PROCESSING', 'STOPPING') AND j.lease_until < now()
           AND j.lease_key IS NULL
         LIMIT max_jobs)
    ), seen AS (
        -- The lapsed jobs of those keys, as this statement's snapshot has them.
        SELECT j.id, j.lease_key
        FROM @schema@.django_dbq_job j
        WHERE j.state IN ('PROCESSING', 'STOPPING')
          AND j.lease_until < now()
          AND j.lease_key IN (SELECT k.lease_key FROM lost_keys k)
        UNION ALL
        SELECT k.id, NULL::varchar FROM (SELECT id FROM keyless LIMIT max_jobs) k
    ), locked AS (
        -- Skipping what another statement holds: a heartbeat never waits here
        -- (behind an application's open transaction that saved a running job,
        -- it would stop renewing its own worker's leases).
        SELECT j.id, j.version, j.claimed_by, j.lease_until, j.lease_key, j.state, j.name,
               j.attempts
        FROM @schema@.django_dbq_job j
        WHERE j.id IN (SELECT s.id FROM seen s)
          AND j.state IN ('PROCESSING', 'STOPPING')
          AND (j.lease_until < now() OR j.lease_until IS NULL)
        ORDER BY j.id
        FOR UPDATE SKIP LOCKED
    ), whole AS (
        -- The keys all of whose lapsed jobs this statement holds; a batch with a
        -- job held elsewhere (by another noticing worker, say) waits for a later
        -- call, so that it is judged once, as a whole.
        SELECT s.lease_key
        FROM seen s
        LEFT JOIN locked l ON l.id = s.id
        WHERE s.lease_key IS NOT NULL
        GROUP BY s.lease_key
        HAVING count(l.id) = count(*)
    ), lapsed AS (
        SELECT l.*
        FROM locked l
        WHERE l.lease_key IS NULL OR l.lease_key IN (SELECT w.lease_key FROM whole w)
    ), placed AS (
        SELECT l.*, c.position,
               count(*) OVER (PARTITION BY l.lease_key) AS lost_together,
               min(c.position) OVER (PARTITION BY l.lease_key) AS first_position
        FROM lapsed l
        LEFT JOIN LATERAL (
            SELECT (e.payload ->> 'position')::integer AS position
            FROM @schema@.django_dbq_jobevent e
            WHERE e.job_id = l.id AND e.kind = 'claimed'
            ORDER BY e.version DESC
            LIMIT 1
        ) c ON l.lease_key IS NOT NULL
    ), judged AS (
        SELECT p.*,
               COALESCE(p.lease_key IS NOT NULL AND p.state = 'PROCESSING'
                        AND (p.position = p.first_position OR p.lost_together = 1), false) AS blamed,
               greatest(CASE WHEN jsonb_typeof(rules -> p.name -> 'limit') = 'number'
                             THEN least((rules -> p.name ->> 'limit')::numeric, 1000)::integer
                        END, 1) AS attempt_limit,
               least(greatest(COALESCE(
                   CASE WHEN jsonb_typeof(rules -> p.name -> 'delays' -> p.attempts) = 'number'
                        THEN (rules -> p.name -> 'delays' ->> p.attempts)::float8 END,
                   least(5 * power(2, least(p.attempts, 20)), 3600)), 0), 86400)
                   * CASE WHEN COALESCE(rules -> p.name -> 'jitter', 'true') = 'false' THEN 1
                          ELSE 0.5 + random() END AS delay
        FROM placed p
    )
    INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
    SELECT d.id, d.version + 1,
           CASE WHEN NOT d.blamed THEN 'lease_expired'
                WHEN d.attempts + 1 > d.attempt_limit THEN 'failed'
                ELSE 'retried' END,
           CASE WHEN NOT d.blamed THEN jsonb_build_object(
                    'worker', d.claimed_by, 'lease_until', d.lease_until, 'noticed_by', p_worker)
           ELSE jsonb_build_object(
                    'worker', d.claimed_by, 'lease_until', d.lease_until, 'noticed_by', p_worker,
                    'error', jsonb_build_object(
                        'type', 'django_dbq.exceptions.WorkerLost',
                        'message', format(
                            'the worker %s stopped renewing its lease while it ran this job; '
                            'the task may have ended its process (a crash, an out-of-memory '
                            'kill, os._exit) or the worker lost the database; attempt %s of %s',
                            d.claimed_by, d.attempts + 1, d.attempt_limit + 1),
                        'traceback', ''),
                    'attempt', d.attempts + 1)
                || CASE WHEN d.attempts + 1 > d.attempt_limit THEN '{}'::jsonb
                   ELSE jsonb_build_object('run_after', now() + make_interval(secs => d.delay))
                   END
           END
    FROM judged d
    ORDER BY d.id
    RETURNING job_id, kind::text;
END
$$;
