-- Installed by migration 0017: frozen copies of the functions it installs or
-- replaces in place, from events/sql/ledger.sql as it was then.

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
DECLARE
    deleted bigint;
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
    $sql$, kept) USING created_before, COALESCE(sealed_below, 0);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    PERFORM set_config('dbq.retention', '', true);
    PERFORM set_config('dbq.applying', '', true);
    RETURN deleted;
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
