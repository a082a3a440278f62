-- The ledger's guard and the application's ways into the ledger: enqueue, save
-- and retention. What is installed now (migration 0011); @schema@ and the
-- search_path rule are explained at the top of projections/sql/apply.sql.
--
-- No role but the tables' owner holds a write right on django_dbq_jobevent:
-- the application appends through these functions, which run with the owner's
-- rights (SECURITY DEFINER) and take only what an application may do.

-- dbq_protect_ledger_v1: the BEFORE UPDATE OR DELETE OR TRUNCATE ... FOR EACH
-- STATEMENT trigger function of django_dbq_jobevent: the ledger is append-only.
-- The one exception is the retention function below (and the test suites'
-- flush), which opens the guard for its own statements (dbq.retention); the
-- guard opens only while the tables' owner is the current user, so no role
-- below the owner opens it with a setting. pgtrigger.ignore() does not switch
-- it off.
CREATE OR REPLACE FUNCTION @schema@.dbq_protect_ledger_v1()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'TRUNCATE')
       AND pg_catalog.current_setting('dbq.retention', true) = 'on'
       AND (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = TG_RELID)
           = current_user::text::regrole
    THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'django_dbq: the job ledger is append-only; % on django_dbq_jobevent is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Record a change by appending an event; remove old finished jobs with manage.py delete_old_jobs.';
END
$$;


-- dbq_is_job_fields_v1: whether `payload` holds fields of a job an application
-- may write (name, state, next_task, workspace, queue_name, priority,
-- run_after) and nothing else: no attempts, import marks, leases or times of
-- its own. Inlined: the quick test of every enqueue and save.
CREATE OR REPLACE FUNCTION @schema@.dbq_is_job_fields_v1(payload jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_typeof(payload) = 'object'
       AND payload - '{name,state,next_task,workspace,queue_name,priority,run_after}'::text[] = '{}'::jsonb
$$;


-- Superseded by dbq_is_creatable_v2 (migration 0011); called by the superseded
-- dbq_create_job_v1 and dbq_create_jobs_v1.
-- dbq_is_creatable_v1: dbq_is_job_fields_v1, in a state a job may be created in.
CREATE OR REPLACE FUNCTION @schema@.dbq_is_creatable_v1(payload jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT @schema@.dbq_is_job_fields_v1(payload)
       AND COALESCE(payload ->> 'state', 'NEW') IN ('NEW', 'READY', 'FAILED', 'COMPLETE')
$$;


-- dbq_check_created_v1: raise unless `payload` is what an application may
-- enqueue: the fields of a new job and nothing else (no attempts, no import
-- marks, no times of its own), in a state a job may be created in; returns the
-- payload when it is.
CREATE OR REPLACE FUNCTION @schema@.dbq_check_created_v1(job_id uuid, payload jsonb)
RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM @schema@.dbq_check_fields_v1('created', payload);
    IF COALESCE(payload ->> 'state', 'NEW') NOT IN ('NEW', 'READY', 'FAILED', 'COMPLETE') THEN
        RAISE EXCEPTION 'django_dbq: a job cannot be created in state %', payload ->> 'state'
            USING ERRCODE = 'check_violation',
                  HINT = 'Create it as NEW, READY, FAILED or COMPLETE; only a worker moves a job to PROCESSING or STOPPING.';
    END IF;
    RETURN payload;
END
$$;


-- dbq_check_fields_v1: raise unless dbq_is_job_fields_v1(payload), naming what
-- the `kind` event may not hold; returns the payload when it passes.
CREATE OR REPLACE FUNCTION @schema@.dbq_check_fields_v1(kind text, payload jsonb)
RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_typeof(payload) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'django_dbq: the % event''s payload must be a JSON object', kind
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT @schema@.dbq_is_job_fields_v1(payload) THEN
        RAISE EXCEPTION 'django_dbq: a % event may not set %', kind,
            (SELECT string_agg(k, ', ') FROM jsonb_object_keys(payload - '{name,state,next_task,workspace,queue_name,priority,run_after}'::text[]) k)
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'An application writes name, state, next_task, workspace, queue_name, priority and run_after; workers record their own events.';
    END IF;
    RETURN payload;
END
$$;


-- Superseded by dbq_create_job_v2 (migration 0011); kept for the processes of the
-- previous release while a rolling deploy replaces them.
-- dbq_create_job_v1: enqueue one job (Job.objects.create): its `created` event
-- at version 1; returns the event's time as epoch seconds.
CREATE OR REPLACE FUNCTION @schema@.dbq_create_job_v1(p_job_id uuid, p_payload jsonb)
RETURNS float8
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    created_at timestamptz;
BEGIN
    IF NOT COALESCE(@schema@.dbq_is_creatable_v1(p_payload::jsonb), false) THEN
        PERFORM @schema@.dbq_check_created_v1(p_job_id, p_payload);
    END IF;
    INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
    VALUES (p_job_id, 1, 'created', p_payload)
    RETURNING at INTO created_at;
    RETURN extract(epoch FROM created_at)::float8;
END
$$;


-- Superseded by dbq_create_jobs_v2 (migration 0011); kept for the processes of the
-- previous release while a rolling deploy replaces them.
-- dbq_create_jobs_v1: enqueue jobs (bulk_create): one `created` event each, in
-- the order given, in one statement; `events` is a JSON array of
-- {job_id, payload}. at = clock_timestamp() per row, so jobs created together
-- keep their order; the times come back in the same order.
CREATE OR REPLACE FUNCTION @schema@.dbq_create_jobs_v1(events jsonb)
RETURNS SETOF float8
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- Each payload is checked as it is inserted; the check that raises runs
    -- only for a payload that fails the quick test.
    RETURN QUERY
    INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
    SELECT e.job_id, 1, 'created', CASE
        WHEN @schema@.dbq_is_creatable_v1(e.payload::jsonb) THEN e.payload
        ELSE @schema@.dbq_check_created_v1(e.job_id::uuid, e.payload::jsonb)
        END
    FROM ROWS FROM (jsonb_to_recordset(events) AS (job_id uuid, payload jsonb))
        WITH ORDINALITY AS e(job_id, payload, n)
    ORDER BY e.n
    RETURNING extract(epoch FROM at)::float8;
END
$$;


-- Superseded by dbq_update_jobs_v2 (migration 0011); kept for the processes of the
-- previous release while a rolling deploy replaces them.
-- dbq_update_jobs_v1: job.save()'s `updated` events, one per job at the job's
-- next version; `events` is a JSON array of {job_id, kind, payload}, kind
-- `updated` and payload the changed fields a save may set. The state machine
-- refuses a save into or out of a worker's states.
CREATE OR REPLACE FUNCTION @schema@.dbq_update_jobs_v1(events jsonb)
RETURNS TABLE (job_id uuid, version integer, at float8)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY SELECT * FROM @schema@.dbq_append_updates_v1(events::jsonb, NULL::text);
END
$$;


-- dbq_append_updates_v1: the `updated` events of dbq_update_jobs_v1 and
-- dbq_save_held_v1, one per job at its next version, each checked as it is
-- inserted; with `key_hash`, only for jobs claimed with that key under a live
-- lease. Locking the projection rows first serialises writers of the same job,
-- so a concurrent writer waits and then reads the version this statement
-- leaves. Called by those two functions only (not granted).
CREATE OR REPLACE FUNCTION @schema@.dbq_append_updates_v1(events jsonb, key_hash text)
RETURNS TABLE (job_id uuid, version integer, at float8)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH incoming AS (
        SELECT *
        FROM ROWS FROM (jsonb_to_recordset(events) AS (job_id uuid, kind text, payload jsonb))
            WITH ORDINALITY AS i(job_id, kind, payload, n)
    ), current_version AS (
        SELECT j.id, j.version
        FROM @schema@.django_dbq_job j
        WHERE j.id IN (SELECT i.job_id FROM incoming i)
          AND (key_hash IS NULL OR (j.lease_key = key_hash
                                    AND j.state IN ('PROCESSING', 'STOPPING')
                                    AND j.lease_until > now()))
        FOR NO KEY UPDATE
    ), appended AS (
        INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
        SELECT i.job_id, c.version + 1, 'updated', CASE
            WHEN i.kind = 'updated' AND @schema@.dbq_is_job_fields_v1(i.payload) THEN i.payload
            ELSE @schema@.dbq_refuse_update_v1(i.kind::text, i.payload::jsonb)
            END
        FROM incoming i
        JOIN current_version c ON c.id = i.job_id
        ORDER BY i.n
        RETURNING job_id, version, at
    )
    SELECT a.job_id, a.version::integer, extract(epoch FROM a.at)::float8 FROM appended a;
END
$$;


-- dbq_refuse_update_v1: the error for a save that is not an `updated` event of
-- a job's fields.
CREATE OR REPLACE FUNCTION @schema@.dbq_refuse_update_v1(kind text, payload jsonb)
RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF kind IS DISTINCT FROM 'updated' THEN
        RAISE EXCEPTION 'django_dbq: a save appends an updated event of the job''s fields, not %', COALESCE(kind, 'null')
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Use job.save(), job.cancel() or job.requeue(); workers record their own events.';
    END IF;
    RETURN @schema@.dbq_check_fields_v1(kind, payload);
END
$$;


-- dbq_is_time_in_range_v1: whether a payload time (ISO 8601 text, or NULL)
-- names a year from 2 to 9998: whatever its offset, the instant is then one
-- that every client can load (Python's datetime holds years 1 to 9999, where
-- PostgreSQL goes from 4713 BC), so a job's times never stop a worker that
-- reads them. Text only, so it is immutable; dbq_time_v1 refuses other forms
-- (this test passes them on).
CREATE OR REPLACE FUNCTION @schema@.dbq_is_time_in_range_v1(value text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT value IS NULL OR value !~ '^\d{4}-' OR substr(value, 1, 4) BETWEEN '0002' AND '9998'
$$;


-- dbq_check_time_in_range_v1: raise unless dbq_is_time_in_range_v1(value),
-- naming the field.
CREATE OR REPLACE FUNCTION @schema@.dbq_check_time_in_range_v1(field text, value text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF NOT @schema@.dbq_is_time_in_range_v1(value) THEN
        RAISE EXCEPTION 'django_dbq: % % is out of range', field, value
            USING ERRCODE = 'datetime_field_overflow',
                  HINT = 'Use a time from the year 2 to the year 9998.';
    END IF;
END
$$;


-- dbq_is_creatable_v2: dbq_is_job_fields_v1, in a state a job may be created
-- in: any of django-db-queue's six, with a run_after in range. A job created
-- PROCESSING or STOPPING is held by no worker (no lease): lease expiry gives it
-- back to its queue, as it does for jobs imported in those states.
CREATE OR REPLACE FUNCTION @schema@.dbq_is_creatable_v2(payload jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT @schema@.dbq_is_job_fields_v1(payload)
       AND COALESCE(payload ->> 'state', 'NEW')
           IN ('NEW', 'READY', 'PROCESSING', 'STOPPING', 'FAILED', 'COMPLETE')
       AND @schema@.dbq_is_time_in_range_v1(payload ->> 'run_after')
$$;


-- dbq_check_created_v2: raise unless dbq_is_creatable_v2(payload), naming the
-- broken rule; returns the payload when it passes.
CREATE OR REPLACE FUNCTION @schema@.dbq_check_created_v2(job_id uuid, payload jsonb)
RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM @schema@.dbq_check_fields_v1('created', payload);
    IF COALESCE(payload ->> 'state', 'NEW')
       NOT IN ('NEW', 'READY', 'PROCESSING', 'STOPPING', 'FAILED', 'COMPLETE') THEN
        RAISE EXCEPTION 'django_dbq: a job cannot be created in state %', payload ->> 'state'
            USING ERRCODE = 'check_violation',
                  HINT = 'Create it as NEW, READY, PROCESSING, STOPPING, FAILED or COMPLETE; a job is cancelled with job.cancel().';
    END IF;
    PERFORM @schema@.dbq_check_time_in_range_v1('run_after', payload ->> 'run_after');
    RETURN payload;
END
$$;


-- dbq_create_job_v2: enqueue one job (Job.objects.create): its `created` event
-- at version 1, in any state dbq_is_creatable_v2 takes; returns the event's
-- time as epoch seconds.
CREATE OR REPLACE FUNCTION @schema@.dbq_create_job_v2(p_job_id uuid, p_payload jsonb)
RETURNS float8
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    created_at timestamptz;
BEGIN
    IF NOT COALESCE(@schema@.dbq_is_creatable_v2(p_payload::jsonb), false) THEN
        PERFORM @schema@.dbq_check_created_v2(p_job_id, p_payload);
    END IF;
    -- The event's hash here rather than from the row trigger (seals.sql).
    created_at := clock_timestamp();
    INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload, at, hash)
    VALUES (p_job_id, 1, 'created', p_payload, created_at, @schema@.dbq_event_hash_v1(
        NULL::bytea, p_job_id::uuid, 1, 'created'::text, p_payload::jsonb, created_at));
    RETURN extract(epoch FROM created_at)::float8;
END
$$;


-- dbq_create_jobs_v2: enqueue jobs (bulk_create) as dbq_create_job_v2 does, one
-- `created` event each, in the order given, in one statement; `events` is a
-- JSON array of {job_id, payload}. at = clock_timestamp() per row, so jobs
-- created together keep their order; the times come back in the same order.
CREATE OR REPLACE FUNCTION @schema@.dbq_create_jobs_v2(events jsonb)
RETURNS SETOF float8
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
    INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
    SELECT e.job_id, 1, 'created', CASE
        WHEN @schema@.dbq_is_creatable_v2(e.payload::jsonb) THEN e.payload
        ELSE @schema@.dbq_check_created_v2(e.job_id::uuid, e.payload::jsonb)
        END
    FROM ROWS FROM (jsonb_to_recordset(events) AS (job_id uuid, payload jsonb))
        WITH ORDINALITY AS e(job_id, payload, n)
    ORDER BY e.n
    RETURNING extract(epoch FROM at)::float8;
END
$$;


-- dbq_create_jobs_v3: dbq_create_jobs_v2 with the payloads said once. Jobs
-- created together mostly share one payload (the same name, first task, queue
-- and priority, an empty workspace), so `payloads` is a JSON array of the
-- distinct ones, each checked once, and job i gets payloads[which[i]] (from 0).
-- One `created` event per job id, in the order given, at = clock_timestamp()
-- per row; the times come back in the same order.
CREATE OR REPLACE FUNCTION @schema@.dbq_create_jobs_v3(job_ids uuid[], payloads jsonb, which integer[])
RETURNS SETOF float8
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    checked jsonb[];
    printed text[];
    mismatch boolean;
BEGIN
    -- Each test apart: an OR's operands may be evaluated in any order.
    IF jsonb_typeof(payloads) IS DISTINCT FROM 'array' THEN
        mismatch := true;
    ELSIF cardinality(job_ids) IS DISTINCT FROM cardinality(which)
       OR array_ndims(job_ids) > 1 OR array_ndims(which) > 1 THEN
        mismatch := true;
    ELSE
        mismatch := EXISTS (SELECT FROM unnest(which) w
                            WHERE w IS NULL OR w < 0 OR w >= jsonb_array_length(payloads));
    END IF;
    IF mismatch THEN
        RAISE EXCEPTION 'django_dbq: dbq_create_jobs_v3 takes as many job ids as payload numbers, each a position in the JSON array of payloads'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Create jobs with Job.objects.bulk_create().';
    END IF;
    checked := ARRAY(
        SELECT CASE
            WHEN @schema@.dbq_is_creatable_v2(p.payload) THEN p.payload
            ELSE @schema@.dbq_check_created_v2(
                job_ids[array_position(which, (p.n - 1)::integer)], p.payload)
            END
        FROM jsonb_array_elements(payloads) WITH ORDINALITY AS p(payload, n)
        ORDER BY p.n);
    -- Each payload printed once for the events' hashes (seals.sql), which are
    -- computed here rather than by the row trigger.
    printed := ARRAY(SELECT c::text FROM unnest(checked) WITH ORDINALITY AS u(c, n) ORDER BY u.n);
    RETURN QUERY
    INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload, at, hash)
    SELECT j.id, 1, 'created', checked[j.w + 1], j.at, @schema@.dbq_event_hash_text_v1(
        NULL::bytea, j.id::uuid, 1, 'created'::text, printed[j.w + 1]::text, j.at::timestamptz)
    FROM (
        -- OFFSET 0: each row's time is taken once, for its column and its hash.
        SELECT u.id, u.w, u.n, clock_timestamp() AS at
        FROM unnest(job_ids, which) WITH ORDINALITY AS u(id, w, n)
        ORDER BY u.n
        OFFSET 0
    ) j
    ORDER BY j.n
    RETURNING extract(epoch FROM at)::float8;
END
$$;


-- dbq_is_saved_fields_v1: whether `payload` holds what a save may change: the
-- fields of dbq_is_job_fields_v1 and `created` (the time a job was enqueued,
-- which django-db-queue's users set to age a job), as a string; the fold reads
-- it with dbq_time_v1, which refuses any text but an ISO 8601 time with its
-- offset; both times in range (dbq_is_time_in_range_v1). Inlined: the quick
-- test of every save.
CREATE OR REPLACE FUNCTION @schema@.dbq_is_saved_fields_v1(payload jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_typeof(payload) = 'object'
       AND payload - '{name,state,next_task,workspace,queue_name,priority,run_after,created}'::text[] = '{}'::jsonb
       AND COALESCE(jsonb_typeof(payload -> 'created'), 'string') = 'string'
       AND @schema@.dbq_is_time_in_range_v1(payload ->> 'created')
       AND @schema@.dbq_is_time_in_range_v1(payload ->> 'run_after')
$$;


-- dbq_refuse_save_v1: the error for a save that is not an `updated` event of
-- the fields dbq_is_saved_fields_v1 takes.
CREATE OR REPLACE FUNCTION @schema@.dbq_refuse_save_v1(kind text, payload jsonb)
RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF kind IS DISTINCT FROM 'updated' THEN
        RAISE EXCEPTION 'django_dbq: a save appends an updated event of the job''s fields, not %', COALESCE(kind, 'null')
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Use job.save(), job.cancel() or job.requeue(); workers record their own events.';
    END IF;
    IF jsonb_typeof(payload -> 'created') IS DISTINCT FROM 'string' AND payload ? 'created' THEN
        RAISE EXCEPTION 'django_dbq: an updated event''s created must be a time, not %', payload -> 'created'
            USING ERRCODE = 'invalid_datetime_format',
                  HINT = 'Write times as 2030-01-13T00:00:00+00:00 (Python: aware_datetime.isoformat()).';
    END IF;
    PERFORM @schema@.dbq_check_time_in_range_v1('created', payload ->> 'created');
    PERFORM @schema@.dbq_check_time_in_range_v1('run_after', payload ->> 'run_after');
    RETURN @schema@.dbq_check_fields_v1(kind, payload - 'created');
END
$$;


-- dbq_update_jobs_v2: job.save()'s `updated` events, one per job at the job's
-- next version; `events` is a JSON array of {job_id, kind, payload}, kind
-- `updated` and payload the changed fields a save may set (those of
-- dbq_is_saved_fields_v1). The state machine refuses a save into or out of a
-- worker's states.
CREATE OR REPLACE FUNCTION @schema@.dbq_update_jobs_v2(events jsonb)
RETURNS TABLE (job_id uuid, version integer, at float8)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY SELECT * FROM @schema@.dbq_append_updates_v2(events::jsonb, NULL::text);
END
$$;


-- dbq_append_updates_v2: the `updated` events of dbq_update_jobs_v2 and
-- dbq_save_held_v2, as dbq_append_updates_v1 with the fields of
-- dbq_is_saved_fields_v1. Called by those two functions only (not granted).
CREATE OR REPLACE FUNCTION @schema@.dbq_append_updates_v2(events jsonb, key_hash text)
RETURNS TABLE (job_id uuid, version integer, at float8)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH incoming AS (
        SELECT *
        FROM ROWS FROM (jsonb_to_recordset(events) AS (job_id uuid, kind text, payload jsonb))
            WITH ORDINALITY AS i(job_id, kind, payload, n)
    ), current_version AS (
        SELECT j.id, j.version
        FROM @schema@.django_dbq_job j
        WHERE j.id IN (SELECT i.job_id FROM incoming i)
          AND (key_hash IS NULL OR (j.lease_key = key_hash
                                    AND j.state IN ('PROCESSING', 'STOPPING')
                                    AND j.lease_until > now()))
        FOR NO KEY UPDATE
    ), appended AS (
        INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
        SELECT i.job_id, c.version + 1, 'updated', CASE
            WHEN i.kind = 'updated' AND @schema@.dbq_is_saved_fields_v1(i.payload) THEN i.payload
            ELSE @schema@.dbq_refuse_save_v1(i.kind::text, i.payload::jsonb)
            END
        FROM incoming i
        JOIN current_version c ON c.id = i.job_id
        ORDER BY i.n
        RETURNING job_id, version, at
    )
    SELECT a.job_id, a.version::integer, extract(epoch FROM a.at)::float8 FROM appended a;
END
$$;


-- dbq_retire_old_jobs_v1: the ledger's retention path. Removes the whole history
-- of every finished job (COMPLETE, FAILED or CANCELLED) created before
-- `created_before`, and of every STOPPING one no live lease holds (as
-- django-db-queue 3.3 removed old STOPPING jobs; one a worker still runs is
-- kept), then its projection row, and returns how many jobs went. It
-- is the only function that opens the ledger's guard (dbq.retention). Granted to
-- the maintenance role only. A job that a row of another table still references
-- through a foreign key (a user model's ForeignKey to Job) is kept, with its
-- history, until that row lets go of it: deleting it would fail the whole
-- statement at commit (Django's foreign keys are checked then), and with it
-- every later run. (A row that comes to reference a doomed job while this runs
-- still fails this run; the next one keeps that job.)
--
-- A job with an event a seal covers (seals.sql) goes only when
-- `record_sealed`: the ids and hashes of its sealed events are then written to
-- django_dbq_retired, one record per seal, unsigned, for the caller to sign in
-- the same transaction (dbq_sign_retired_v1); otherwise the job is kept.
-- Called by dbq_delete_old_jobs_v3 and v4 only (not granted).
CREATE OR REPLACE FUNCTION @schema@.dbq_retire_old_jobs_v1(created_before timestamptz, record_sealed boolean)
RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    -- All of them in one statement: dbq_retire_old_jobs_v2 without a batch.
    RETURN (SELECT r.deleted FROM @schema@.dbq_retire_old_jobs_v2(
        created_before, record_sealed, NULL::uuid, NULL::integer) r);
END
$$;


-- dbq_retire_old_jobs_v2: dbq_retire_old_jobs_v1 in batches. Of the jobs whose
-- id comes after `after_id` (NULL: from the first), the first `max_jobs` in id
-- order (NULL: all of them) are looked at, and those that may go go; returns
-- how many went and the last id looked at (NULL once no job is left to look
-- at). A caller that passes each batch's last id to the next, in a transaction
-- of its own, goes over the projection once, and no batch holds its locks for
-- longer than max_jobs jobs take. Called by dbq_retire_old_jobs_v1 and
-- dbq_delete_old_jobs_v5 only (not granted).
CREATE OR REPLACE FUNCTION @schema@.dbq_retire_old_jobs_v2(
    created_before timestamptz, record_sealed boolean, after_id uuid, max_jobs integer
)
RETURNS TABLE (deleted bigint, last_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    batch text := '';
    kept text := '';
    reference record;
    sealed_below bigint;
BEGIN
    -- One test per single-column foreign key to the projection; regclass text
    -- is schema-qualified (the search_path holds no schema of ours) and quoted.
    FOR reference IN
        SELECT c.conrelid::regclass::text AS referencing, a.attname AS referencing_column
        FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        WHERE c.confrelid = '@schema@.django_dbq_job'::regclass AND c.contype = 'f'
          AND cardinality(c.conkey) = 1
        ORDER BY 1, 2
    LOOP
        kept := kept || format(
            ' AND NOT EXISTS (SELECT FROM %s r WHERE r.%I = j.id)',
            reference.referencing, reference.referencing_column);
    END LOOP;
    -- The events up to the last seal's last are sealed. The lock keeps a seal
    -- from being taken while jobs go (a sealer waits for this transaction), so
    -- no seal covers an event this statement removes; the seal read after it
    -- is the last one only in READ COMMITTED, where each statement sees what
    -- committed before it.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'django_dbq: retention runs in READ COMMITTED, not %', current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state',
                  HINT = 'Call Job.objects.delete_old() (or manage.py delete_old_jobs) outside a REPEATABLE READ or SERIALIZABLE transaction.';
    END IF;
    LOCK TABLE @schema@.django_dbq_seal IN SHARE MODE;
    SELECT s.last_event_id INTO sealed_below FROM @schema@.django_dbq_seal s ORDER BY s.id DESC LIMIT 1;
    IF sealed_below IS NOT NULL AND NOT record_sealed THEN
        kept := kept || format(
            ' AND NOT EXISTS (SELECT FROM @schema@.django_dbq_jobevent e'
            ' WHERE e.job_id = j.id AND e.id <= %s)', sealed_below);
    END IF;
    -- A job whose history no longer matches its chain is kept, with the
    -- evidence: removing it would record its rewritten hashes.
    kept := kept || ' AND NOT EXISTS (SELECT FROM @schema@.django_dbq_jobevent e'
        ' LEFT JOIN @schema@.django_dbq_jobevent p ON p.job_id = e.job_id AND p.version = e.version - 1'
        ' WHERE e.job_id = j.id AND e.hash IS DISTINCT FROM @schema@.dbq_event_hash_v1('
        'p.hash, e.job_id, e.version::integer, e.kind::text, e.payload, e.at))';
    IF max_jobs IS NOT NULL THEN
        IF max_jobs < 1 THEN
            RAISE EXCEPTION 'django_dbq: a retention batch takes at least 1 job, not %', max_jobs
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- The batch: the next max_jobs ids (the primary key, in order).
        SELECT w.id INTO last_id FROM (
            SELECT j.id FROM @schema@.django_dbq_job j
            WHERE after_id IS NULL OR j.id > after_id
            ORDER BY j.id LIMIT max_jobs) w
        ORDER BY w.id DESC LIMIT 1;
        IF last_id IS NULL THEN
            deleted := 0;
            RETURN NEXT;
            RETURN;
        END IF;
        batch := ' AND ($3 IS NULL OR j.id > $3) AND j.id <= $4';
    END IF;
    PERFORM set_config('dbq.retention', 'on', true);
    PERFORM set_config('dbq.applying', 'on', true);
    -- Locking the rows first keeps a job from being requeued by a concurrent
    -- transaction between the choice and the delete.
    EXECUTE format($sql$
        WITH doomed AS (
            SELECT j.id FROM @schema@.django_dbq_job j
            WHERE (j.state IN ('COMPLETE', 'FAILED', 'CANCELLED')
                   OR (j.state = 'STOPPING' AND (j.lease_until IS NULL OR j.lease_until < now())))
              AND j.created < $1 %s %s
            FOR UPDATE OF j
        ), history AS (
            DELETE FROM @schema@.django_dbq_jobevent WHERE job_id IN (SELECT id FROM doomed)
            RETURNING id, hash
        ), retired AS (
            -- Seals cover contiguous id ranges from 1: an event's seal is the
            -- first whose last event id is at or above its own.
            INSERT INTO @schema@.django_dbq_retired (seal_id, retired_at, events, entries, txid)
            SELECT s.id, clock_timestamp(), count(*),
                   string_agg(int8send(h.id) || h.hash, '\x'::bytea ORDER BY h.id),
                   pg_current_xact_id()::text::bigint
            FROM history h
            CROSS JOIN LATERAL (
                SELECT s.id FROM @schema@.django_dbq_seal s
                WHERE s.last_event_id >= h.id ORDER BY s.last_event_id LIMIT 1) s
            WHERE h.id <= $2
            GROUP BY s.id
        )
        DELETE FROM @schema@.django_dbq_job WHERE id IN (SELECT id FROM doomed)
    $sql$, batch, kept)
    USING created_before, COALESCE(sealed_below, 0), after_id, last_id;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    PERFORM set_config('dbq.retention', '', true);
    PERFORM set_config('dbq.applying', '', true);
    RETURN NEXT;
END
$$;


-- dbq_delete_old_jobs_v3: dbq_retire_old_jobs_v1 that keeps every job a seal
-- covers: the previous release's retention, which signs no retirement record,
-- while a rolling deploy replaces it. Granted to the maintenance role only.
CREATE OR REPLACE FUNCTION @schema@.dbq_delete_old_jobs_v3(created_before timestamptz)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN @schema@.dbq_retire_old_jobs_v1(created_before::timestamptz, false);
END
$$;


-- dbq_delete_old_jobs_v4: dbq_retire_old_jobs_v1, sealed jobs included, with
-- their retirement records for the caller to sign in the same transaction
-- (Job.objects.delete_old()). Granted to the maintenance role only.
CREATE OR REPLACE FUNCTION @schema@.dbq_delete_old_jobs_v4(created_before timestamptz)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN @schema@.dbq_retire_old_jobs_v1(created_before::timestamptz, true);
END
$$;


-- dbq_delete_old_jobs_v5: dbq_delete_old_jobs_v4 in batches (dbq_retire_old_jobs_v2):
-- one batch of `max_jobs` jobs after `after_id` per call, each in a transaction
-- of the caller's with its retirement records signed (Job.objects.delete_old()).
-- Granted to the maintenance role only.
CREATE OR REPLACE FUNCTION @schema@.dbq_delete_old_jobs_v5(
    created_before timestamptz, after_id uuid, max_jobs integer
)
RETURNS TABLE (deleted bigint, last_id uuid)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF max_jobs IS NULL THEN
        RAISE EXCEPTION 'django_dbq: a retention batch needs a number of jobs'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass max_jobs (Job.objects.delete_old() passes DBQ_RETENTION_BATCH), or call dbq_delete_old_jobs_v4 for one statement.';
    END IF;
    RETURN QUERY SELECT r.deleted, r.last_id FROM @schema@.dbq_retire_old_jobs_v2(
        created_before::timestamptz, true, after_id::uuid, max_jobs::integer) r;
END
$$;
