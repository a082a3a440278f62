-- What migration 0017 replaced in place, as it was before (0011, 0013, 0016):

-- the way back from 0017 installs these again.


CREATE OR REPLACE FUNCTION @schema@.dbq_create_job_v2(p_job_id uuid, p_payload jsonb)
RETURNS float8
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    created_at timestamptz;
BEGIN
    IF NOT COALESCE(@schema@.dbq_is_creatable_v2(p_payload::jsonb), false) THEN
        PERFORM @schema@.dbq_check_created_v2(p_job_id, p_payload);
    END IF;
    INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
    VALUES (p_job_id, 1, 'created', p_payload)
    RETURNING at INTO created_at;
    RETURN extract(epoch FROM created_at)::float8;
END
$$;


CREATE OR REPLACE FUNCTION @schema@.dbq_create_jobs_v3(job_ids uuid[], payloads jsonb, which integer[])
RETURNS SETOF float8
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    checked jsonb[];
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
    RETURN QUERY
    INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
    SELECT j.id, 1, 'created', checked[j.w + 1]
    FROM unnest(job_ids, which) WITH ORDINALITY AS j(id, w, n)
    ORDER BY j.n
    RETURNING extract(epoch FROM at)::float8;
END
$$;


CREATE OR REPLACE FUNCTION @schema@.dbq_delete_old_jobs_v3(created_before timestamptz)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deleted bigint;
    kept text := '';
    reference record;
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
    PERFORM set_config('dbq.retention', 'on', true);
    PERFORM set_config('dbq.applying', 'on', true);
    -- Locking the rows first keeps a job from being requeued by a concurrent
    -- transaction between the choice and the delete.
    EXECUTE format($sql$
        WITH doomed AS (
            SELECT j.id FROM @schema@.django_dbq_job j
            WHERE (j.state IN ('COMPLETE', 'FAILED', 'CANCELLED')
                   OR (j.state = 'STOPPING' AND (j.lease_until IS NULL OR j.lease_until < now())))
              AND j.created < $1 %s
            FOR UPDATE OF j
        ), history AS (
            DELETE FROM @schema@.django_dbq_jobevent WHERE job_id IN (SELECT id FROM doomed)
        )
        DELETE FROM @schema@.django_dbq_job WHERE id IN (SELECT id FROM doomed)
    $sql$, kept) USING created_before;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    PERFORM set_config('dbq.retention', '', true);
    PERFORM set_config('dbq.applying', '', true);
    RETURN deleted;
END
$$;


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
        SELECT j.id, j.version
        FROM @schema@.django_dbq_job j
        WHERE j.id IN (SELECT i.job_id FROM incoming i)
          AND j.lease_key = key_hash
          AND j.state IN ('PROCESSING', 'STOPPING')
          AND j.lease_until > now()
        FOR NO KEY UPDATE
    )
    INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
    SELECT i.job_id, h.version + 1, CASE
        WHEN i.kind IN ('task_done', 'completed', 'failed', 'retried', 'stopping', 'released')
            THEN i.kind
        ELSE @schema@.dbq_refuse_worker_kind_v1(i.kind::text)
        END,
        i.payload
    FROM incoming i
    JOIN held h ON h.id = i.job_id
    ORDER BY i.n
    RETURNING job_id;
END
$$;


CREATE OR REPLACE FUNCTION @schema@.dbq_fold_events_v2(events @schema@.django_dbq_jobevent[])
RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    created_count bigint;
    other_count bigint;
    illegal_count bigint;
    applied bigint;
    waiting text[];
    also_waiting text[];
BEGIN
    -- One pass counts what to insert, what to update and what breaks a rule;
    -- the slower search for the broken event runs only when there is one.
    SELECT count(*) FILTER (WHERE e.kind = 'created'),
           count(*) FILTER (WHERE e.kind <> 'created'),
           count(*) FILTER (WHERE @schema@.dbq_event_is_illegal_v2(
               e.kind::text, e.version::integer, e.payload::jsonb, j.id IS NOT NULL,
               j.state::text, j.version::integer, j.cancel_requested::boolean))
    INTO created_count, other_count, illegal_count
    FROM unnest(events) e
    LEFT JOIN @schema@.django_dbq_job j ON j.id = e.job_id;
    IF illegal_count > 0 THEN
        PERFORM @schema@.dbq_refuse_events_v2(events);
    END IF;

    -- Opens the projection's write guard for this function's statements only.
    PERFORM set_config('dbq.applying', 'on', true);

    IF created_count > 0 THEN
        WITH added AS (
            INSERT INTO @schema@.django_dbq_job
            SELECT r.*
            FROM unnest(events) e,
                 LATERAL @schema@.dbq_job_row_v1(
                     e.job_id::uuid, e.version::integer, e.payload::jsonb, e.at::timestamptz) r
            WHERE e.kind = 'created'
            RETURNING queue_name, state
        )
        SELECT array_agg(DISTINCT queue_name::text) FILTER (WHERE state IN ('NEW', 'READY'))
        INTO waiting
        FROM added;
    END IF;

    IF other_count > 0 THEN
        WITH updated AS (
            -- Workers' events carry the workspace and next task they leave behind;
            -- `updated` carries exactly the fields a save() changed.
            UPDATE @schema@.django_dbq_job j SET
                state = @schema@.dbq_next_state_v2(
                    e.kind::text, j.state::text, e.payload::jsonb, j.cancel_requested::boolean),
                name = CASE WHEN e.kind = 'updated' AND e.payload ? 'name'
                            THEN e.payload ->> 'name' ELSE j.name END,
                next_task = CASE
                    WHEN e.kind = 'completed' THEN ''
                    WHEN e.kind IN ('task_done', 'updated') AND e.payload ? 'next_task'
                        THEN e.payload ->> 'next_task'
                    ELSE j.next_task END,
                workspace = CASE
                    WHEN e.kind IN ('task_done', 'completed', 'failed', 'updated')
                        AND e.payload ? 'workspace'
                        THEN NULLIF(e.payload -> 'workspace', 'null'::jsonb)
                    ELSE j.workspace END,
                queue_name = CASE WHEN e.kind = 'updated' AND e.payload ? 'queue_name'
                                  THEN e.payload ->> 'queue_name' ELSE j.queue_name END,
                priority = CASE WHEN e.kind = 'updated' AND e.payload ? 'priority'
                                THEN (e.payload ->> 'priority')::smallint ELSE j.priority END,
                -- A save may set when the job was enqueued (django-db-queue's way
                -- to age a job); the claim order and retention read it.
                created = CASE WHEN e.kind = 'updated' AND e.payload ? 'created'
                               THEN @schema@.dbq_time_v1(e.payload ->> 'created') ELSE j.created END,
                run_after = CASE
                    WHEN e.kind IN ('updated', 'retried') AND e.payload ? 'run_after'
                        THEN @schema@.dbq_time_v1(e.payload ->> 'run_after')
                    WHEN e.kind = 'requeued' THEN NULL
                    ELSE j.run_after END,
                -- Failed attempts so far; a requeue starts the count again.
                attempts = CASE
                    WHEN e.kind IN ('retried', 'failed') THEN j.attempts + 1
                    WHEN e.kind = 'requeued' THEN 0
                    ELSE j.attempts END,
                -- A pending cancellation lasts while a worker still holds the job.
                cancel_requested = e.kind = 'cancel_requested' OR (
                    j.cancel_requested AND e.kind IN ('stopping', 'lease_renewed', 'updated')),
                -- The worker holding the job, until when, and the hash of the
                -- key it proves itself with; cleared when it lets go.
                claimed_by = CASE
                    WHEN e.kind = 'claimed' THEN e.payload ->> 'worker'
                    WHEN e.kind IN ('stopping', 'lease_renewed', 'updated', 'cancel_requested')
                        THEN j.claimed_by
                    END,
                lease_until = CASE
                    WHEN e.kind IN ('claimed', 'lease_renewed')
                        THEN (e.payload ->> 'lease_until')::timestamptz
                    WHEN e.kind IN ('stopping', 'updated', 'cancel_requested') THEN j.lease_until
                    END,
                lease_key = CASE
                    WHEN e.kind = 'claimed' THEN e.payload ->> 'lease_key'
                    WHEN e.kind IN ('stopping', 'lease_renewed', 'updated', 'cancel_requested')
                        THEN j.lease_key
                    END,
                modified = e.at,
                version = e.version
            FROM unnest(events) e
            -- The version test re-checks a row a concurrent writer may have moved on.
            WHERE j.id = e.job_id AND e.kind <> 'created' AND j.version = e.version - 1
            RETURNING j.queue_name, j.state
        )
        SELECT count(*), array_agg(DISTINCT queue_name::text) FILTER (WHERE state IN ('NEW', 'READY'))
        INTO applied, also_waiting
        FROM updated;
        IF applied <> other_count THEN
            RAISE EXCEPTION 'django_dbq: % of % events found their job at the expected version', applied, other_count
                USING ERRCODE = 'serialization_failure';
        END IF;
        waiting := array_cat(waiting, also_waiting);
    END IF;

    PERFORM set_config('dbq.applying', '', true);
    RETURN waiting;
END
$$;


CREATE OR REPLACE FUNCTION @schema@.dbq_apply_events_v5()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    waiting text[];
    payload text;
BEGIN
    IF TG_TABLE_NAME <> 'django_dbq_jobevent' OR TG_TABLE_SCHEMA <> @schema_literal@
       OR TG_OP <> 'INSERT' OR TG_LEVEL <> 'STATEMENT' OR TG_WHEN <> 'AFTER' THEN
        RAISE EXCEPTION 'django_dbq: dbq_apply_events_v5 is the trigger function of django_dbq_jobevent alone'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- Opens the projection's write guard for this function's statements only.
    PERFORM set_config('dbq.applying', 'on', true);
    IF NOT EXISTS (
        SELECT FROM new_events e
        WHERE e.kind <> 'created' OR e.version <> 1
           OR COALESCE(e.payload ->> 'state', 'NEW') NOT IN
               ('NEW', 'READY', 'PROCESSING', 'STOPPING', 'FAILED', 'COMPLETE')
    ) THEN
        -- Only new jobs, each created at version 1 in a known state: the rows
        -- need no look at the projection (a job created twice is refused by the
        -- ledger's unique (job_id, version)).
        WITH added AS (
            INSERT INTO @schema@.django_dbq_job
            SELECT r.*
            FROM new_events e,
                 LATERAL @schema@.dbq_job_row_v1(
                     e.job_id::uuid, e.version::integer, e.payload::jsonb, e.at::timestamptz) r
            RETURNING queue_name, state
        )
        SELECT array_agg(DISTINCT queue_name::text) FILTER (WHERE state IN ('NEW', 'READY'))
        INTO waiting
        FROM added;
    ELSE
        waiting := @schema@.dbq_fold_events_v2(
            ARRAY(SELECT e::@schema@.django_dbq_jobevent FROM new_events e));
        -- Inserted and updated jobs may name a queue twice between them.
        IF cardinality(waiting) > 1 THEN
            waiting := ARRAY(SELECT DISTINCT unnest(waiting));
        END IF;
    END IF;
    PERFORM set_config('dbq.applying', '', true);
    IF cardinality(waiting) > 0 THEN
        payload := to_jsonb(waiting)::text;
        -- NOTIFY payloads must stay under 8000 bytes.
        PERFORM pg_notify('django_dbq', CASE WHEN octet_length(payload) > 7900 THEN '*' ELSE payload END);
    END IF;
    RETURN NULL;
END
$$;
