-- The ledger trigger's way into the projection, second version. Installed by
-- migration 0003; the state machine and the set-based apply function stay those
-- of apply_events_v1.sql (dbq_next_state_v1, dbq_apply_events_v1).
--
-- What changed from dbq_apply_statement_v1: a statement that only creates jobs
-- (Job.objects.create, bulk_create) inserts its projection rows in one statement
-- that does not read the projection first: a new job's row follows from its
-- `created` event alone, and the primary key tells whether the job existed. The
-- wake-up NOTIFY is sent from here, so the trigger makes one call.

-- dbq_apply_statement_v2: apply the events of one ledger INSERT to the projection
-- and wake idle workers once (channel django_dbq, payload a JSON array of the
-- queues in which jobs now wait, or '*' when the list would not fit). It runs with
-- the rights of the tables' owner (SECURITY DEFINER), so roles that may only
-- append events still get their projection rows written; it refuses to be called
-- other than from a trigger. A statement brings few events, and re-planning each
-- query for each exact array costs more than it saves, so plans stay generic.
CREATE OR REPLACE FUNCTION dbq_apply_statement_v2(events django_dbq_jobevent[])
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    inserted bigint;
    waiting text[];
    payload text;
BEGIN
    IF pg_trigger_depth() = 0 THEN
        RAISE EXCEPTION 'django_dbq: dbq_apply_statement_v2 is for the ledger trigger only'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Append events to django_dbq_jobevent; its trigger applies them.';
    END IF;

    IF NOT EXISTS (
        SELECT FROM unnest(events) e
        WHERE e.kind <> 'created' OR e.version <> 1
           OR COALESCE(e.payload ->> 'state', 'NEW') NOT IN
               ('NEW', 'READY', 'PROCESSING', 'STOPPING', 'FAILED', 'COMPLETE')
    ) THEN
        -- Only new jobs, each created at version 1 in a known state: their rows
        -- are the events' payloads, the same columns dbq_apply_events_v1 writes.
        PERFORM set_config('dbq.applying', 'on', true);
        WITH added AS (
            INSERT INTO django_dbq_job (
                id, created, modified, name, state, next_task, workspace,
                queue_name, priority, run_after, version, claimed_by, lease_until,
                attempts, cancel_requested
            )
            SELECT e.job_id,
                   COALESCE((e.payload ->> 'created')::timestamptz, e.at),
                   COALESCE((e.payload ->> 'modified')::timestamptz, e.at),
                   e.payload ->> 'name',
                   COALESCE(e.payload ->> 'state', 'NEW'),
                   COALESCE(e.payload ->> 'next_task', ''),
                   NULLIF(e.payload -> 'workspace', 'null'::jsonb),
                   COALESCE(e.payload ->> 'queue_name', 'default'),
                   COALESCE((e.payload ->> 'priority')::smallint, 0),
                   (e.payload ->> 'run_after')::timestamptz,
                   e.version,
                   NULL,
                   NULL,
                   COALESCE((e.payload ->> 'attempts')::integer, 0),
                   false
            FROM unnest(events) e
            -- A job that exists already is left alone here and refused below.
            ON CONFLICT (id) DO NOTHING
            RETURNING queue_name, state
        )
        SELECT count(*), array_agg(DISTINCT queue_name) FILTER (WHERE state IN ('NEW', 'READY'))
        INTO inserted, waiting
        FROM added;
        PERFORM set_config('dbq.applying', '', true);
        IF inserted <> cardinality(events) THEN
            -- Raises "job ... already exists; a job is created once".
            PERFORM dbq_refuse_events_v1(events);
            RAISE EXCEPTION 'django_dbq: % of % created events made a job', inserted, cardinality(events)
                USING ERRCODE = 'unique_violation';
        END IF;
    ELSE
        waiting := ARRAY(SELECT DISTINCT unnest(dbq_apply_events_v1(events)));
    END IF;

    IF cardinality(waiting) > 0 THEN
        payload := to_jsonb(waiting)::text;
        -- NOTIFY payloads must stay under 8000 bytes.
        IF octet_length(payload) > 7900 THEN
            payload := '*';
        END IF;
        PERFORM pg_notify('django_dbq', payload);
    END IF;
END
$$;
