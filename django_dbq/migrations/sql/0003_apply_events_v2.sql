-- The ledger trigger's function, second version. Installed by migration 0003; the
-- state machine and the set-based apply function stay those of
-- apply_events_v1.sql (dbq_next_state_v1, dbq_apply_events_v1).
--
-- What changed from the v1 path (pgtrigger's function -> dbq_apply_statement_v1
-- -> dbq_apply_events_v1, then dbq_notify_waiting_v1):
-- * the trigger executes this function itself (see JobEvent.Meta.triggers), so
--   one function call serves a statement, and pgtrigger.ignore() cannot switch
--   the projection's upkeep off: a skipped statement would leave rows that
--   replay does not reproduce;
-- * a statement that only creates jobs (Job.objects.create, bulk_create)
--   inserts its projection rows straight from the transition table, without
--   reading the projection first: a new job's row follows from its `created`
--   event alone. A second `created` event for a job never gets here: the
--   ledger's unique (job_id, version) refuses it first, and the projection's
--   primary key backs that up;
-- * the wake-up NOTIFY (dbq_notify_waiting_v1) is sent from here.

-- dbq_apply_events_v2: the AFTER INSERT ... FOR EACH STATEMENT trigger function
-- of django_dbq_jobevent (transition table new_events). It applies the
-- statement's events to the projection and wakes idle workers once (channel
-- django_dbq, payload a JSON array of the queues in which jobs now wait, or '*'
-- when the list would not fit). It runs with the rights of the tables' owner
-- (SECURITY DEFINER), so roles that may only append events still get their
-- projection rows written; PostgreSQL calls a trigger function only as a
-- trigger. A statement brings few events, and re-planning each query for each
-- statement costs more than it saves, so plans stay generic.
CREATE OR REPLACE FUNCTION dbq_apply_events_v2()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    waiting text[];
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
    END IF;
    PERFORM dbq_notify_waiting_v1(waiting);
    RETURN NULL;
END
$$;
