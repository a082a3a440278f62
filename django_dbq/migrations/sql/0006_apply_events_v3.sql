-- The ledger trigger's function, third version, and the projection's guard as a
-- function of our own. Installed by migration 0006; the state machine and the
-- set-based apply function stay those of apply_events_v1.sql.
--
-- What changed from v2 (apply_events_v2.sql), for the cost of a statement that
-- creates one job (about 0.47 -> 0.43 ms in pgbench, commit included):
-- * the wake-up NOTIFY is sent from here instead of through
--   dbq_notify_waiting_v1, with the same payload: a JSON array of the distinct
--   queues in which jobs now wait, or '*' when it would not fit. The rules are
--   repeated on purpose: the helper's call and query cost about 0.02 ms per
--   statement (0.445 -> 0.421 ms, alternating pgbench runs with the new guard);
-- * the projection's guard (dbq_protect_projection_v1 below) replaces the
--   function pgtrigger wrote for it, whose check for pgtrigger.ignore() opened a
--   subtransaction and caught an error whenever the session had never set it.

-- dbq_apply_events_v3: the AFTER INSERT ... FOR EACH STATEMENT trigger function
-- of django_dbq_jobevent (transition table new_events). It applies the
-- statement's events to the projection and wakes idle workers once. It runs with
-- the rights of the tables' owner (SECURITY DEFINER), so roles that may only
-- append events still get their projection rows written; PostgreSQL calls a
-- trigger function only as a trigger, and pgtrigger.ignore() cannot switch it
-- off. A statement brings few events, and re-planning each query for each
-- statement costs more than it saves, so plans stay generic.
CREATE OR REPLACE FUNCTION dbq_apply_events_v3()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    waiting text[];
    payload text;
BEGIN
    IF NOT EXISTS (
        SELECT FROM new_events e
        WHERE e.kind <> 'created' OR e.version <> 1
           OR COALESCE(e.payload ->> 'state', 'NEW') NOT IN
               ('NEW', 'READY', 'PROCESSING', 'STOPPING', 'FAILED', 'COMPLETE')
    ) THEN
        -- Only new jobs, each created at version 1 in a known state: their rows
        -- are the events' payloads, the columns dbq_apply_events_v1 writes.
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
            FROM new_events e
            RETURNING queue_name, state
        )
        SELECT array_agg(DISTINCT queue_name) FILTER (WHERE state IN ('NEW', 'READY'))
        INTO waiting
        FROM added;
        PERFORM set_config('dbq.applying', '', true);
    ELSE
        waiting := dbq_apply_events_v1(ARRAY(SELECT e::django_dbq_jobevent FROM new_events e));
        -- Inserted and updated jobs may name a queue twice between them.
        IF cardinality(waiting) > 1 THEN
            waiting := ARRAY(SELECT DISTINCT unnest(waiting));
        END IF;
    END IF;
    IF cardinality(waiting) > 0 THEN
        payload := to_jsonb(waiting)::text;
        -- NOTIFY payloads must stay under 8000 bytes.
        PERFORM pg_notify('django_dbq', CASE WHEN octet_length(payload) > 7900 THEN '*' ELSE payload END);
    END IF;
    RETURN NULL;
END
$$;


-- dbq_protect_projection_v1: the BEFORE ... FOR EACH STATEMENT trigger function
-- that refuses every write to django_dbq_job not made by the apply and replay
-- functions (they set dbq.applying for their own statements). Like the function
-- pgtrigger wrote for this trigger before, it steps aside inside
-- pgtrigger.ignore("django_dbq.Job:protect_projection") (django_dbq.testing's
-- allow_flush() relies on that), reading pgtrigger's setting without raising
-- when a session never set it.
CREATE OR REPLACE FUNCTION dbq_protect_projection_v1()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('dbq.applying', true) = 'on'
       OR TG_NAME = ANY(COALESCE(NULLIF(current_setting('pgtrigger.ignore', true), ''), '{}')::text[])
    THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'django_dbq: django_dbq_job is a projection of the job ledger; % on it is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Create jobs with Job.objects.create(), change them with job.save(), or append events to django_dbq_jobevent.';
END
$$;
