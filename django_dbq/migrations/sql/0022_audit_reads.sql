-- Installed by migration 0022: the audit reads' replays, as
-- django_dbq.projections.scratch.scratch_sql() generates them from
-- projections/sql/replay.sql then (the replay with django_dbq_job renamed to
-- pg_temp.dbq_scratch_job, the functions it calls renamed alike, and for
-- dbq_replay_copy_scratch_v5 the events read from pg_temp.dbq_scratch_jobevent).
-- The refuse and fold variants they call are 0017_audit_reads.sql's, unchanged.
-- They run with the caller's rights and write nothing but the caller's own TEMP
-- tables. Do not edit: regenerate.


-- dbq_replay_events_scratch_v5: dbq_replay_events_v5, renamed.
CREATE OR REPLACE FUNCTION @schema@.dbq_replay_events_scratch_v5(
    until timestamptz DEFAULT NULL,
    job_ids uuid[] DEFAULT NULL,
    slice_bytes bigint DEFAULT 134217728
)
RETURNS bigint
LANGUAGE plpgsql
-- Runs with the owner's rights as the owner's own call: pinned like the owner's
-- SECURITY DEFINER functions, so that nothing in the session's schemas (an
-- operator planted in the app's schema) is resolved inside it.
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    round record;
    index_definitions text[];
    definition text;
    key_name text;
    key_definition text;
    total bigint := 0;
    slices integer := 1;
    ledger_bytes bigint;
    referencing text;
    bounds uuid[];
    sample_percent real;
BEGIN
    IF slice_bytes IS NULL OR slice_bytes < 1 THEN
        RAISE EXCEPTION 'django_dbq: slice_bytes must be a positive number of bytes, not %', slice_bytes
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- The rebuild empties the projection (or the given jobs' rows): a foreign key
    -- from another table would refuse that midway, so say so before anything.
    SELECT string_agg(format('%s (%s)', c.conrelid::regclass, c.conname), ', ')
    INTO referencing
    FROM pg_catalog.pg_constraint c
    WHERE c.confrelid = 'pg_temp.dbq_scratch_job'::regclass AND c.contype = 'f';
    IF referencing IS NOT NULL THEN
        RAISE EXCEPTION 'django_dbq: the projection cannot be rebuilt while foreign keys reference django_dbq_job: %', referencing
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'Declare the ForeignKey to Job with db_constraint=False (as JobEvent.job is), or drop the constraint while you replay and add it back after.';
    END IF;

    PERFORM set_config('dbq.applying', 'on', true);
    IF job_ids IS NULL THEN
        TRUNCATE pg_temp.dbq_scratch_job;
    ELSE
        DELETE FROM pg_temp.dbq_scratch_job WHERE id = ANY(job_ids);
    END IF;
    PERFORM set_config('dbq.applying', '', true);

    IF job_ids IS NULL THEN
        -- Indexes that back no constraint are dropped and made again at the end.
        SELECT array_agg(pg_get_indexdef(i.indexrelid)) INTO index_definitions
        FROM pg_index i
        WHERE i.indrelid = 'pg_temp.dbq_scratch_job'::regclass
          AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid);
        FOR definition IN
            SELECT i.indexrelid::regclass::text
            FROM pg_index i
            WHERE i.indrelid = 'pg_temp.dbq_scratch_job'::regclass
              AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        LOOP
            EXECUTE 'DROP INDEX ' || definition;
        END LOOP;
        -- So is the primary key, under its own name.
        SELECT c.conname, pg_get_constraintdef(c.oid) INTO key_name, key_definition
        FROM pg_constraint c
        WHERE c.conrelid = 'pg_temp.dbq_scratch_job'::regclass AND c.contype = 'p';
        IF key_name IS NOT NULL THEN
            EXECUTE format('ALTER TABLE pg_temp.dbq_scratch_job DROP CONSTRAINT %I', key_name);
        END IF;
        -- The ledger's size on disk (rows and their out-of-line values) is close
        -- to the size of its events as array elements.
        ledger_bytes := pg_table_size('@schema@.django_dbq_jobevent');
        IF ledger_bytes / slice_bytes >= 10000 THEN
            -- Each slice reads the whole ledger.
            RAISE EXCEPTION 'django_dbq: slice_bytes % is too small for a ledger of % bytes', slice_bytes, ledger_bytes
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = format('Use at least %s bytes (10,000 slices at most).', ledger_bytes / 10000 + 1);
        END IF;
        slices := greatest(1, ceil(ledger_bytes / slice_bytes::numeric));
    END IF;
    IF slices > 1 THEN
        -- Slice k holds the job ids from bounds[k - 1] (from the first, for
        -- k = 1) up to bounds[k] (to the last, for the last slice): each job in
        -- exactly one, whatever the sample gave. About 20,000 events sampled.
        SELECT least(100, 100 * 20000 / greatest(1, c.reltuples))::real INTO sample_percent
        FROM pg_class c WHERE c.oid = '@schema@.django_dbq_jobevent'::regclass;
        -- (From the ledger also when the events are read from a copy of it.)
        SELECT percentile_disc(ARRAY(SELECT k::float8 / slices FROM generate_series(1, slices - 1) k))
               WITHIN GROUP (ORDER BY sampled.job_id)
        INTO bounds
        FROM @schema@.django_dbq_jobevent sampled TABLESAMPLE SYSTEM (sample_percent);
        -- A sample of nothing (a ledger never analysed and nearly empty): one slice.
        slices := COALESCE(cardinality(bounds), 0) + 1;
    END IF;

    FOR part IN 1 .. slices LOOP
        FOR round IN
            SELECT array_agg(e) AS events
            FROM @schema@.django_dbq_jobevent e
            WHERE (until IS NULL OR e.at <= until)
              AND (job_ids IS NULL OR e.job_id = ANY(job_ids))
              AND (part = 1 OR e.job_id >= bounds[part - 1])
              AND (part = slices OR e.job_id < bounds[part])
            GROUP BY e.version
            ORDER BY e.version
        LOOP
            PERFORM @schema@.dbq_fold_events_scratch_v2(round.events);
            total := total + cardinality(round.events);
        END LOOP;
        IF slices > 1 THEN
            RAISE NOTICE 'dbq replay: slice % of %, % events', part, slices, total;
        END IF;
    END LOOP;

    IF key_name IS NOT NULL THEN
        EXECUTE format('ALTER TABLE pg_temp.dbq_scratch_job ADD CONSTRAINT %I %s', key_name, key_definition);
    END IF;
    FOREACH definition IN ARRAY COALESCE(index_definitions, '{}') LOOP
        EXECUTE definition;
    END LOOP;
    RETURN total;
END
$$;


-- dbq_replay_copy_scratch_v5: dbq_replay_events_v5, renamed and reading the copy.
CREATE OR REPLACE FUNCTION @schema@.dbq_replay_copy_scratch_v5(
    until timestamptz DEFAULT NULL,
    job_ids uuid[] DEFAULT NULL,
    slice_bytes bigint DEFAULT 134217728
)
RETURNS bigint
LANGUAGE plpgsql
-- Runs with the owner's rights as the owner's own call: pinned like the owner's
-- SECURITY DEFINER functions, so that nothing in the session's schemas (an
-- operator planted in the app's schema) is resolved inside it.
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    round record;
    index_definitions text[];
    definition text;
    key_name text;
    key_definition text;
    total bigint := 0;
    slices integer := 1;
    ledger_bytes bigint;
    referencing text;
    bounds uuid[];
    sample_percent real;
BEGIN
    IF slice_bytes IS NULL OR slice_bytes < 1 THEN
        RAISE EXCEPTION 'django_dbq: slice_bytes must be a positive number of bytes, not %', slice_bytes
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- The rebuild empties the projection (or the given jobs' rows): a foreign key
    -- from another table would refuse that midway, so say so before anything.
    SELECT string_agg(format('%s (%s)', c.conrelid::regclass, c.conname), ', ')
    INTO referencing
    FROM pg_catalog.pg_constraint c
    WHERE c.confrelid = 'pg_temp.dbq_scratch_job'::regclass AND c.contype = 'f';
    IF referencing IS NOT NULL THEN
        RAISE EXCEPTION 'django_dbq: the projection cannot be rebuilt while foreign keys reference django_dbq_job: %', referencing
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'Declare the ForeignKey to Job with db_constraint=False (as JobEvent.job is), or drop the constraint while you replay and add it back after.';
    END IF;

    PERFORM set_config('dbq.applying', 'on', true);
    IF job_ids IS NULL THEN
        TRUNCATE pg_temp.dbq_scratch_job;
    ELSE
        DELETE FROM pg_temp.dbq_scratch_job WHERE id = ANY(job_ids);
    END IF;
    PERFORM set_config('dbq.applying', '', true);

    IF job_ids IS NULL THEN
        -- Indexes that back no constraint are dropped and made again at the end.
        SELECT array_agg(pg_get_indexdef(i.indexrelid)) INTO index_definitions
        FROM pg_index i
        WHERE i.indrelid = 'pg_temp.dbq_scratch_job'::regclass
          AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid);
        FOR definition IN
            SELECT i.indexrelid::regclass::text
            FROM pg_index i
            WHERE i.indrelid = 'pg_temp.dbq_scratch_job'::regclass
              AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        LOOP
            EXECUTE 'DROP INDEX ' || definition;
        END LOOP;
        -- So is the primary key, under its own name.
        SELECT c.conname, pg_get_constraintdef(c.oid) INTO key_name, key_definition
        FROM pg_constraint c
        WHERE c.conrelid = 'pg_temp.dbq_scratch_job'::regclass AND c.contype = 'p';
        IF key_name IS NOT NULL THEN
            EXECUTE format('ALTER TABLE pg_temp.dbq_scratch_job DROP CONSTRAINT %I', key_name);
        END IF;
        -- The ledger's size on disk (rows and their out-of-line values) is close
        -- to the size of its events as array elements.
        ledger_bytes := pg_table_size('@schema@.django_dbq_jobevent');
        IF ledger_bytes / slice_bytes >= 10000 THEN
            -- Each slice reads the whole ledger.
            RAISE EXCEPTION 'django_dbq: slice_bytes % is too small for a ledger of % bytes', slice_bytes, ledger_bytes
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = format('Use at least %s bytes (10,000 slices at most).', ledger_bytes / 10000 + 1);
        END IF;
        slices := greatest(1, ceil(ledger_bytes / slice_bytes::numeric));
    END IF;
    IF slices > 1 THEN
        -- Slice k holds the job ids from bounds[k - 1] (from the first, for
        -- k = 1) up to bounds[k] (to the last, for the last slice): each job in
        -- exactly one, whatever the sample gave. About 20,000 events sampled.
        SELECT least(100, 100 * 20000 / greatest(1, c.reltuples))::real INTO sample_percent
        FROM pg_class c WHERE c.oid = '@schema@.django_dbq_jobevent'::regclass;
        -- (From the ledger also when the events are read from a copy of it.)
        SELECT percentile_disc(ARRAY(SELECT k::float8 / slices FROM generate_series(1, slices - 1) k))
               WITHIN GROUP (ORDER BY sampled.job_id)
        INTO bounds
        FROM @schema@.django_dbq_jobevent sampled TABLESAMPLE SYSTEM (sample_percent);
        -- A sample of nothing (a ledger never analysed and nearly empty): one slice.
        slices := COALESCE(cardinality(bounds), 0) + 1;
    END IF;

    FOR part IN 1 .. slices LOOP
        FOR round IN
            SELECT array_agg(e) AS events
            FROM pg_temp.dbq_scratch_jobevent c, unnest(c.events) e
            WHERE (until IS NULL OR e.at <= until)
              AND (job_ids IS NULL OR e.job_id = ANY(job_ids))
              AND (part = 1 OR e.job_id >= bounds[part - 1])
              AND (part = slices OR e.job_id < bounds[part])
            GROUP BY e.version
            ORDER BY e.version
        LOOP
            PERFORM @schema@.dbq_fold_events_scratch_v2(round.events);
            total := total + cardinality(round.events);
        END LOOP;
        IF slices > 1 THEN
            RAISE NOTICE 'dbq replay: slice % of %, % events', part, slices, total;
        END IF;
    END LOOP;

    IF key_name IS NOT NULL THEN
        EXECUTE format('ALTER TABLE pg_temp.dbq_scratch_job ADD CONSTRAINT %I %s', key_name, key_definition);
    END IF;
    FOREACH definition IN ARRAY COALESCE(index_definitions, '{}') LOOP
        EXECUTE definition;
    END LOOP;
    RETURN total;
END
$$;
