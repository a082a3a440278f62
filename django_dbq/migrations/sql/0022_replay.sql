-- Installed by migration 0022: replay slices by ranges of job ids. A frozen
-- copy of projections/sql/replay.sql's dbq_replay_events_v5 as it was then.

-- dbq_replay_events_v5: rebuild the projection from the ledger and return the
-- number of events applied: every job's version-1 event as one set, then every
-- version-2 event, and so on, through dbq_fold_events_v2, the function the
-- ledger's trigger applies events with (projections/sql/apply.sql). A full
-- rebuild sets the projection's indexes and primary key aside for its rounds.
-- What is installed now (migration 0011); runs with the caller's rights, and
-- only the tables' owner may run it. Payload times are ISO 8601 with an
-- offset (dbq_time_v1 refuses others as they are appended), so they replay to the same
-- instants under any TimeZone and DateStyle.
--
-- Why slices: a round is handed to the apply function as one array; built for
-- the whole ledger at once, the server held about four times the ledger's size
-- in memory, and a round whose array passed PostgreSQL's 1 GB limit for one
-- value could not be replayed at all. Jobs do not depend on each other, so a
-- ledger larger than `slice_bytes` is split into as many slices as its size
-- needs, ranges of job ids of about the same number of events (their bounds
-- from a sample of the ledger), and each slice is replayed round by round on
-- its own; the rebuilt rows are the same. Since migration 0022 a slice reads
-- its range through the ledger's (job_id, version) index rather than the whole
-- ledger: time-ordered ids (migration 0020) keep a range's events in few pages,
-- so a rebuild reads a ledger of such jobs about once, whatever its size. After
-- each slice a NOTICE says how far it is (`dbq replay: slice 3 of 12, 345678
-- events`), which replay_events shows as progress.
--
-- `until` limits the rebuild to the events recorded up to that time (the
-- projection as it was then), and `job_ids` to those jobs (their rows alone are
-- rebuilt, with every index in place, in one slice); callers that rebuild the
-- past do so in a transaction they roll back.
CREATE OR REPLACE FUNCTION @schema@.dbq_replay_events_v5(
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
    WHERE c.confrelid = '@schema@.django_dbq_job'::regclass AND c.contype = 'f';
    IF referencing IS NOT NULL THEN
        RAISE EXCEPTION 'django_dbq: the projection cannot be rebuilt while foreign keys reference django_dbq_job: %', referencing
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'Declare the ForeignKey to Job with db_constraint=False (as JobEvent.job is), or drop the constraint while you replay and add it back after.';
    END IF;

    PERFORM set_config('dbq.applying', 'on', true);
    IF job_ids IS NULL THEN
        TRUNCATE @schema@.django_dbq_job;
    ELSE
        DELETE FROM @schema@.django_dbq_job WHERE id = ANY(job_ids);
    END IF;
    PERFORM set_config('dbq.applying', '', true);

    IF job_ids IS NULL THEN
        -- Indexes that back no constraint are dropped and made again at the end.
        SELECT array_agg(pg_get_indexdef(i.indexrelid)) INTO index_definitions
        FROM pg_index i
        WHERE i.indrelid = '@schema@.django_dbq_job'::regclass
          AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid);
        FOR definition IN
            SELECT i.indexrelid::regclass::text
            FROM pg_index i
            WHERE i.indrelid = '@schema@.django_dbq_job'::regclass
              AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        LOOP
            EXECUTE 'DROP INDEX ' || definition;
        END LOOP;
        -- So is the primary key, under its own name.
        SELECT c.conname, pg_get_constraintdef(c.oid) INTO key_name, key_definition
        FROM pg_constraint c
        WHERE c.conrelid = '@schema@.django_dbq_job'::regclass AND c.contype = 'p';
        IF key_name IS NOT NULL THEN
            EXECUTE format('ALTER TABLE @schema@.django_dbq_job DROP CONSTRAINT %I', key_name);
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
            PERFORM @schema@.dbq_fold_events_v2(round.events);
            total := total + cardinality(round.events);
        END LOOP;
        IF slices > 1 THEN
            RAISE NOTICE 'dbq replay: slice % of %, % events', part, slices, total;
        END IF;
    END LOOP;

    IF key_name IS NOT NULL THEN
        EXECUTE format('ALTER TABLE @schema@.django_dbq_job ADD CONSTRAINT %I %s', key_name, key_definition);
    END IF;
    FOREACH definition IN ARRAY COALESCE(index_definitions, '{}') LOOP
        EXECUTE definition;
    END LOOP;
    RETURN total;
END
$$;
