-- Unique jobs: jobs created with a unique key, of which at most one waits or
-- runs at a time (installed by migration 0014). The projection's partial unique
-- index django_dbq_job_unique_key (unique_key, over NEW, READY, PROCESSING and
-- STOPPING jobs) is what enforces it: two transactions that create the same key
-- at once both get as far as the projection's INSERT, where the second waits
-- for the first and fails if it commits. The function below takes that failure,
-- looks again and reports the job that won. A finished job (COMPLETE, FAILED,
-- CANCELLED) leaves the index, which frees its key; a requeue that would bring
-- back a key another job holds fails on the same index.


-- dbq_is_unique_key_v1: whether a created payload's unique_key (absent, or a
-- string of 1 to 200 characters) is one the projection can hold.
CREATE OR REPLACE FUNCTION @schema@.dbq_is_unique_key_v1(payload jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT NOT payload ? 'unique_key' OR (
        jsonb_typeof(payload -> 'unique_key') = 'string'
        AND length(payload ->> 'unique_key') BETWEEN 1 AND 200)
$$;


-- dbq_check_unique_created_v1: raise unless the created payload is one
-- dbq_check_created_v2 takes with a unique key beside; returns the payload.
CREATE OR REPLACE FUNCTION @schema@.dbq_check_unique_created_v1(job_id uuid, payload jsonb)
RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_typeof(payload) = 'object' AND NOT @schema@.dbq_is_unique_key_v1(payload) THEN
        RAISE EXCEPTION 'django_dbq: a unique key must be a string of 1 to 200 characters'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass unique_key="invoice-42" or leave it out.';
    END IF;
    PERFORM @schema@.dbq_check_created_v2(job_id, payload - 'unique_key');
    RETURN payload;
END
$$;


-- dbq_enqueue_unique_v1: enqueue jobs of which some carry a unique key: `events`
-- is a JSON array of {job_id, payload} as for dbq_create_jobs_v2, a payload may
-- hold `unique_key`. A job is created unless a job that waits or runs holds its
-- key, or an earlier one of the same call takes it; the others are duplicates.
-- With `p_replace`, each waiting (NEW or READY) job that a duplicate names gets
-- an `updated` event of the last such duplicate's workspace, run_after and
-- priority (debounce); a running one is left as it is. Returns one row per event
-- given, in order: its job id, the time of its `created` event (NULL for a
-- duplicate), the job holding its key (for a duplicate; NULL when that job
-- finished in the meantime, so that the key is free), and whether that job was
-- replaced. Called by dbq_create_unique_jobs_v1 and dbq_replace_unique_jobs_v1
-- only (not granted).
CREATE OR REPLACE FUNCTION @schema@.dbq_enqueue_unique_v1(events jsonb, p_replace boolean)
RETURNS TABLE (job_id uuid, at float8, duplicate_of uuid, replaced boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    created_ids uuid[];
    created_times float8[];
    replaced_ids uuid[] := '{}';
    updates jsonb;
    failed_on text;
    deadlocks integer := 0;
BEGIN
    FOR attempt IN 1..5 LOOP
        BEGIN
            WITH incoming AS (
                SELECT e.job_id, e.payload, e.n, e.payload ->> 'unique_key' AS unique_key,
                       row_number() OVER (PARTITION BY e.payload ->> 'unique_key' ORDER BY e.n) AS nth
                FROM ROWS FROM (jsonb_to_recordset(events) AS (job_id uuid, payload jsonb))
                    WITH ORDINALITY AS e(job_id, payload, n)
            ), fresh AS (
                SELECT i.*
                FROM incoming i
                WHERE i.unique_key IS NULL OR (
                    i.nth = 1
                    AND NOT EXISTS (
                        SELECT FROM @schema@.django_dbq_job j
                        WHERE j.unique_key = i.unique_key
                          AND j.state IN ('NEW', 'READY', 'PROCESSING', 'STOPPING')))
            ), appended AS (
                INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
                SELECT f.job_id, 1, 'created', CASE
                    WHEN @schema@.dbq_is_unique_key_v1(f.payload::jsonb)
                         AND @schema@.dbq_is_creatable_v2(f.payload::jsonb - 'unique_key')
                        THEN f.payload
                    ELSE @schema@.dbq_check_unique_created_v1(f.job_id::uuid, f.payload::jsonb)
                    END
                FROM fresh f
                ORDER BY f.n
                RETURNING job_id, at
            )
            SELECT array_agg(a.job_id), array_agg(extract(epoch FROM a.at)::float8)
            INTO created_ids, created_times
            FROM appended a;
            EXIT;
        EXCEPTION
            WHEN unique_violation THEN
                -- A concurrent transaction committed a job with one of these keys
                -- after this statement looked: look again, it is visible now
                -- (under READ COMMITTED; a snapshot taken earlier never shows it).
                GET STACKED DIAGNOSTICS failed_on = CONSTRAINT_NAME;
                IF failed_on IS DISTINCT FROM 'django_dbq_job_unique_key' THEN
                    RAISE;
                END IF;
                IF attempt = 5 THEN
                    RAISE EXCEPTION 'django_dbq: a concurrent transaction created a job with one of these unique keys, which this transaction''s snapshot cannot see'
                        USING ERRCODE = 'serialization_failure',
                              HINT = 'Retry the transaction, or create unique jobs under READ COMMITTED.';
                END IF;
            WHEN deadlock_detected THEN
                -- Two calls creating the same keys in different orders wait for
                -- each other's keys; PostgreSQL stops one. Undoing this attempt
                -- lets the other go on; this one then waits for it and looks
                -- again. Once: a second deadlock is one this call's earlier
                -- statements take part in, which no retry here undoes.
                deadlocks := deadlocks + 1;
                IF deadlocks > 1 OR attempt = 5 THEN
                    RAISE;
                END IF;
        END;
    END LOOP;
    created_ids := COALESCE(created_ids, '{}');

    IF p_replace THEN
        -- The waiting jobs that duplicates name, locked (in id order, so that two
        -- calls never wait for each other) so that no worker claims one while it
        -- changes (claims skip locked rows), each changed once, by the last
        -- duplicate of its key.
        WITH incoming AS (
            SELECT e.job_id, e.payload, e.n, e.payload ->> 'unique_key' AS unique_key
            FROM ROWS FROM (jsonb_to_recordset(events) AS (job_id uuid, payload jsonb))
                WITH ORDINALITY AS e(job_id, payload, n)
        ), last_duplicate AS (
            SELECT DISTINCT ON (i.unique_key) i.unique_key, i.payload
            FROM incoming i
            WHERE i.unique_key IS NOT NULL AND NOT i.job_id = ANY(created_ids)
            ORDER BY i.unique_key, i.n DESC
        ), waiting AS (
            SELECT j.id, j.unique_key
            FROM @schema@.django_dbq_job j
            WHERE j.unique_key IN (SELECT d.unique_key FROM last_duplicate d)
              AND j.state IN ('NEW', 'READY')
            ORDER BY j.id
            FOR NO KEY UPDATE
        )
        SELECT array_agg(w.id), jsonb_agg(jsonb_build_object(
            'job_id', w.id, 'kind', 'updated',
            'payload', jsonb_build_object(
                'workspace', COALESCE(d.payload -> 'workspace', 'null'::jsonb),
                'run_after', COALESCE(d.payload -> 'run_after', 'null'::jsonb),
                'priority', COALESCE(d.payload -> 'priority', '0'::jsonb))))
        INTO replaced_ids, updates
        FROM waiting w
        JOIN last_duplicate d ON d.unique_key = w.unique_key;
        IF replaced_ids IS NOT NULL THEN
            PERFORM @schema@.dbq_append_updates_v2(updates, NULL::text);
        END IF;
        replaced_ids := COALESCE(replaced_ids, '{}');
    END IF;

    RETURN QUERY
    SELECT e.job_id, c.at, h.id, COALESCE(h.id = ANY(replaced_ids), false)
    FROM ROWS FROM (jsonb_to_recordset(events) AS (job_id uuid, payload jsonb))
        WITH ORDINALITY AS e(job_id, payload, n)
    LEFT JOIN unnest(created_ids, created_times) AS c(job_id, at) ON c.job_id = e.job_id
    -- LIMIT 1 (there is one at most) keeps this a lookup in the key index per
    -- duplicate, run for duplicates only, whatever the number of keys held.
    LEFT JOIN LATERAL (
        SELECT j.id
        FROM @schema@.django_dbq_job j
        WHERE c.job_id IS NULL
          AND j.unique_key = e.payload ->> 'unique_key'
          AND j.state IN ('NEW', 'READY', 'PROCESSING', 'STOPPING')
        LIMIT 1
    ) h ON true
    ORDER BY e.n;
END
$$;


-- dbq_create_unique_jobs_v1: enqueue jobs some of which carry a unique key
-- (Job.objects.create and bulk_create with unique_key), leaving out the
-- duplicates (dbq_enqueue_unique_v1). For the roles that may create jobs.
CREATE OR REPLACE FUNCTION @schema@.dbq_create_unique_jobs_v1(events jsonb)
RETURNS TABLE (job_id uuid, at float8, duplicate_of uuid, replaced boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY SELECT * FROM @schema@.dbq_enqueue_unique_v1(events::jsonb, false);
END
$$;


-- dbq_replace_unique_jobs_v1: the same, and each waiting job a duplicate names
-- takes the duplicate's workspace, run_after and priority (on_duplicate=
-- "replace"): a save of a job the caller does not hold, so it is for the roles
-- that may save jobs (the app role), not for workers.
CREATE OR REPLACE FUNCTION @schema@.dbq_replace_unique_jobs_v1(events jsonb)
RETURNS TABLE (job_id uuid, at float8, duplicate_of uuid, replaced boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY SELECT * FROM @schema@.dbq_enqueue_unique_v1(events::jsonb, true);
END
$$;
