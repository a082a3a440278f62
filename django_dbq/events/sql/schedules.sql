-- Periodic jobs: how the workers enqueue each tick of a schedule exactly once,
-- with no leader. What is installed now (migration 0015); @schema@ and the
-- search_path rule are explained at the top of projections/sql/apply.sql.
--
-- django_dbq_schedule holds a row per schedule ever seen (the name of its job in
-- settings.JOBS): when it was first seen (`since`) and the last tick enqueued
-- (`last_tick`). Every worker computes the due ticks of every schedule in
-- Python and calls dbq_enqueue_ticks_v1 when one is due; the row's lock decides
-- which call enqueues it. No role but the tables' owner writes the table; the
-- workers go through the function below, which runs with the owner's rights.

-- dbq_check_ticks_v1: raise unless `ticks` is what a worker may enqueue for the
-- schedule `name`: a JSON array of at most 100 {tick, job_id, payload}, ticks
-- ISO 8601 with an offset, strictly ascending, none over a minute ahead of the
-- database's clock (a tick is enqueued once it is due; the minute is for clock
-- skew between hosts), each payload the `created` payload of a job of that
-- name (dbq_is_creatable_v2), or null for a tick whose creation hook refused
-- its job (the tick passes with no job). Called by dbq_enqueue_ticks_v1 only.
CREATE OR REPLACE FUNCTION @schema@.dbq_check_ticks_v1(name text, ticks jsonb)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    IF jsonb_typeof(ticks) IS DISTINCT FROM 'array' OR jsonb_array_length(ticks) > 100 THEN
        RAISE EXCEPTION 'django_dbq: the ticks of schedule % must be a JSON array of at most 100', name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- dbq_time_v1 refuses a tick that is not ISO 8601 with an offset.
    -- The latest tick (or one without a time) tells whether any is ahead.
    SELECT t.tick INTO bad
    FROM ROWS FROM (jsonb_to_recordset(ticks) AS (tick text)) AS t(tick)
    ORDER BY (t.tick IS NULL) DESC, @schema@.dbq_time_v1(t.tick) DESC
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    ELSIF bad.tick IS NULL THEN
        RAISE EXCEPTION 'django_dbq: a tick of schedule % has no time', name
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF @schema@.dbq_time_v1(bad.tick) > now() + interval '1 minute' THEN
        RAISE EXCEPTION 'django_dbq: tick % of schedule % is not due yet', bad.tick, name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A worker enqueues a tick once it is due; check the clocks of the worker''s host and the database.';
    END IF;
    IF EXISTS (
        SELECT FROM (
            SELECT @schema@.dbq_time_v1(t.tick)
                   <= lag(@schema@.dbq_time_v1(t.tick)) OVER (ORDER BY t.n) AS unordered
            FROM ROWS FROM (jsonb_to_recordset(ticks) AS (tick text))
                WITH ORDINALITY AS t(tick, n)
        ) o
        WHERE o.unordered
    ) THEN
        RAISE EXCEPTION 'django_dbq: the ticks of schedule % must be strictly ascending', name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT t.job_id, t.payload ->> 'name' AS job_name INTO bad
    FROM ROWS FROM (jsonb_to_recordset(ticks) AS (job_id uuid, payload jsonb)) AS t(job_id, payload)
    WHERE t.payload IS NOT NULL AND (t.job_id IS NULL OR t.payload ->> 'name' IS DISTINCT FROM name)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'django_dbq: a job of schedule % has a job_id and the name %, not %', name, name, COALESCE(bad.job_name, 'null')
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A schedule enqueues jobs of its own name only.';
    END IF;
    -- A tick without a job (its creation hook refused it) moves the schedule on
    -- too, so it must be due: none ahead of the clock skips a later tick.
    IF EXISTS (
        SELECT FROM ROWS FROM (jsonb_to_recordset(ticks) AS (tick text, payload jsonb)) AS t(tick, payload)
        WHERE t.payload IS NULL AND @schema@.dbq_time_v1(t.tick) > now()
    ) THEN
        RAISE EXCEPTION 'django_dbq: a tick of schedule % without a job is not due yet', name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Only a due tick may pass without a job.';
    END IF;
    PERFORM @schema@.dbq_check_created_v2(NULL::uuid, t.payload)
    FROM ROWS FROM (jsonb_to_recordset(ticks) AS (payload jsonb)) AS t(payload)
    WHERE t.payload IS NOT NULL AND NOT COALESCE(@schema@.dbq_is_creatable_v2(t.payload), false);
END
$$;


-- dbq_enqueue_ticks_v1: enqueue the due ticks of the schedule `name` that no
-- worker has enqueued yet: one `created` event per tick after the schedule's
-- last tick (its payload as given, plus the tick as `tick`), and move the last
-- tick to the latest one given; return the jobs created, with their ticks.
-- `ticks` is a JSON array of {tick, job_id, payload} (dbq_check_ticks_v1). A
-- schedule seen for the first time (no row) starts from now: its row records
-- now() as `since`, and only ticks after that are enqueued; a worker calls this
-- with no tick to register a schedule it starts with. Granted to the worker role.
-- The row lock is waited for a second at most (lock_timeout): a session that
-- holds it (a transaction left open) makes the call fail, and the worker goes
-- on draining and tries again later, rather than wait behind it.
CREATE OR REPLACE FUNCTION @schema@.dbq_enqueue_ticks_v1(p_name text, p_ticks jsonb)
RETURNS TABLE (job_id uuid, tick timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '1s' AS $$
#variable_conflict use_column
DECLARE
    after_tick timestamptz;
BEGIN
    IF p_name IS NULL OR length(p_name) NOT BETWEEN 1 AND 100 THEN
        RAISE EXCEPTION 'django_dbq: a schedule''s name is its job''s: 1 to 100 characters, not %', COALESCE(p_name, 'null')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM @schema@.dbq_check_ticks_v1(p_name, p_ticks);
    INSERT INTO @schema@.django_dbq_schedule (name, since)
    VALUES (p_name, now())
    ON CONFLICT (name) DO NOTHING;
    -- The row lock serialises the workers that found the same tick due: the
    -- second waits here until the first commits, then reads the tick it left
    -- (READ COMMITTED reads the row anew once the lock is granted) and enqueues
    -- nothing of what the first did.
    SELECT COALESCE(s.last_tick, s.since) INTO after_tick
    FROM @schema@.django_dbq_schedule s
    WHERE s.name = p_name
    FOR NO KEY UPDATE;

    RETURN QUERY
    WITH due AS (
        SELECT t.job_id, t.payload, t.tick AS tick_text, @schema@.dbq_time_v1(t.tick) AS tick, t.n
        FROM ROWS FROM (jsonb_to_recordset(p_ticks) AS (tick text, job_id uuid, payload jsonb))
            WITH ORDINALITY AS t(tick, job_id, payload, n)
        WHERE @schema@.dbq_time_v1(t.tick) > after_tick
    ), appended AS (
        INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
        SELECT d.job_id, 1, 'created', d.payload || jsonb_build_object('tick', d.tick_text)
        FROM due d
        WHERE d.payload IS NOT NULL
        ORDER BY d.n
        RETURNING job_id, payload
    ), moved AS (
        UPDATE @schema@.django_dbq_schedule s SET
            last_tick = (SELECT max(d.tick) FROM due d),
            last_job_id = COALESCE(
                (SELECT d.job_id FROM due d WHERE d.payload IS NOT NULL ORDER BY d.n DESC LIMIT 1),
                s.last_job_id),
            enqueued_at = now()
        WHERE s.name = p_name AND EXISTS (SELECT FROM due)
    )
    SELECT a.job_id, @schema@.dbq_time_v1(a.payload ->> 'tick') FROM appended a;
END
$$;
