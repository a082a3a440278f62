-- The state machine and the apply function of the django_dbq_job projection.
-- Installed by migration 0002; a released function is never edited in place:
-- a change ships as dbq_..._v2 with a migration.

-- dbq_next_state_v1: the state a job moves to when an event of `kind` is applied
-- to it in `state` (with `cancel_requested`, the job's pending cancellation), or
-- NULL when the transition is illegal. The single statement of the state
-- machine: the apply function checks and applies through it.
CREATE OR REPLACE FUNCTION dbq_next_state_v1(
    kind text, state text, payload jsonb, cancel_requested boolean
)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN kind = 'claimed' AND state IN ('NEW', 'READY') THEN 'PROCESSING'
        -- A job whose cancellation was asked for while it ran stops after its
        -- task instead of going back to the queue.
        WHEN kind IN ('task_done', 'retried', 'lease_expired') AND state IN ('PROCESSING', 'STOPPING')
            THEN CASE WHEN cancel_requested THEN 'CANCELLED' ELSE 'READY' END
        WHEN kind = 'completed' AND state IN ('PROCESSING', 'STOPPING') THEN 'COMPLETE'
        WHEN kind = 'failed' AND state IN ('PROCESSING', 'STOPPING') THEN 'FAILED'
        WHEN kind = 'stopping' AND state = 'PROCESSING' THEN 'STOPPING'
        WHEN kind IN ('lease_renewed', 'cancel_requested') AND state IN ('PROCESSING', 'STOPPING')
            THEN state
        -- A worker gives back a job it claimed but did not start, in the state it had.
        WHEN kind = 'released' AND state = 'PROCESSING'
            AND payload ->> 'state' IN ('NEW', 'READY')
            THEN CASE WHEN cancel_requested THEN 'CANCELLED' ELSE payload ->> 'state' END
        WHEN kind = 'cancelled' AND state IN ('NEW', 'READY') THEN 'CANCELLED'
        WHEN kind = 'requeued' AND state IN ('FAILED', 'CANCELLED') THEN 'READY'
        -- `updated` keeps the state unless it names one; a job a worker holds
        -- (PROCESSING, STOPPING) changes state only through the worker's events,
        -- and no save() may put a job into a worker's states.
        WHEN kind = 'updated' AND (NOT payload ? 'state' OR payload ->> 'state' = state)
            THEN state
        WHEN kind = 'updated'
            AND state IN ('NEW', 'READY', 'FAILED', 'COMPLETE', 'CANCELLED')
            AND payload ->> 'state' IN ('NEW', 'READY', 'FAILED', 'COMPLETE', 'CANCELLED')
            THEN payload ->> 'state'
    END
$$;


-- dbq_refuse_events_v1: raise the error for the first event of the set that breaks
-- a rule: a job created twice, an event for a job never created, a version that
-- does not follow the job's, or a transition the state machine does not allow.
-- Called by the apply function only once it has counted a broken rule.
CREATE OR REPLACE FUNCTION dbq_refuse_events_v1(events django_dbq_jobevent[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT e.job_id, e.kind, e.version, j.id IS NOT NULL AS job_exists,
           j.state, j.version AS job_version, e.payload ->> 'state' AS wanted_state
    INTO bad
    FROM unnest(events) e
    LEFT JOIN django_dbq_job j ON j.id = e.job_id
    WHERE dbq_event_is_illegal_v1(
        e.kind, e.version, e.payload, j.id IS NOT NULL, j.state, j.version, j.cancel_requested
    )
    LIMIT 1;

    IF bad.kind = 'created' AND bad.job_exists THEN
        RAISE EXCEPTION 'django_dbq: job % already exists; a job is created once', bad.job_id
            USING ERRCODE = 'unique_violation';
    ELSIF NOT bad.job_exists AND bad.kind <> 'created' THEN
        RAISE EXCEPTION 'django_dbq: % event for job %, which is not in the projection', bad.kind, bad.job_id
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'A job''s history starts with a created event.';
    ELSIF bad.version <> COALESCE(bad.job_version, 0) + 1 THEN
        RAISE EXCEPTION 'django_dbq: % event for job % has version %, expected %', bad.kind, bad.job_id, bad.version, COALESCE(bad.job_version, 0) + 1
            USING ERRCODE = 'check_violation',
                  HINT = 'Append events through django_dbq so that each job''s versions follow each other.';
    ELSIF bad.kind = 'created' THEN
        RAISE EXCEPTION 'django_dbq: job % created in unknown state %', bad.job_id, bad.wanted_state
            USING ERRCODE = 'check_violation';
    ELSE
        RAISE EXCEPTION 'django_dbq: illegal transition: % event on job % in state %', bad.kind, bad.job_id,
            bad.state || CASE WHEN bad.wanted_state IS NULL THEN '' ELSE ' to ' || bad.wanted_state END
            USING ERRCODE = 'check_violation',
                  HINT = 'See the event kinds table in the django-dbq README for the legal transitions.';
    END IF;
END
$$;


-- dbq_event_is_illegal_v1: whether an event breaks a rule, given the job's row
-- (exists, state, version) as it is before the event.
CREATE OR REPLACE FUNCTION dbq_event_is_illegal_v1(
    kind text, version integer, payload jsonb, job_exists boolean, state text, job_version integer,
    cancel_requested boolean
)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN kind = 'created' THEN
            job_exists OR version <> 1
            OR COALESCE(payload ->> 'state', 'NEW') NOT IN
                ('NEW', 'READY', 'PROCESSING', 'STOPPING', 'FAILED', 'COMPLETE')
        ELSE
            NOT job_exists OR version <> job_version + 1
            OR dbq_next_state_v1(kind, state, payload, cancel_requested) IS NULL
    END
$$;


-- dbq_apply_events_v1: apply a set of ledger events to the projection, as sets,
-- and return the queues in which the jobs it touched now wait (NEW or READY).
-- The ledger's statement trigger passes the rows of one INSERT; replay passes one
-- version round at a time. Either way the set holds at most one event per job.
-- The whole set is refused when one event breaks a rule, so a statement never
-- leaves a half-applied batch behind.
CREATE OR REPLACE FUNCTION dbq_apply_events_v1(events django_dbq_jobevent[])
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
           count(*) FILTER (WHERE dbq_event_is_illegal_v1(
               e.kind, e.version, e.payload, j.id IS NOT NULL, j.state, j.version,
               j.cancel_requested))
    INTO created_count, other_count, illegal_count
    FROM unnest(events) e
    LEFT JOIN django_dbq_job j ON j.id = e.job_id;
    IF illegal_count > 0 THEN
        PERFORM dbq_refuse_events_v1(events);
    END IF;

    -- Opens the projection's write guard for this function's statements only.
    PERFORM set_config('dbq.applying', 'on', true);

    IF created_count > 0 THEN
        WITH inserted AS (
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
            WHERE e.kind = 'created'
            RETURNING queue_name, state
        )
        SELECT array_agg(DISTINCT queue_name) FILTER (WHERE state IN ('NEW', 'READY'))
        INTO waiting
        FROM inserted;
    END IF;

    IF other_count > 0 THEN
        WITH updated AS (
            -- Workers' events carry the workspace and next task they leave behind;
            -- `updated` carries exactly the fields a save() changed.
            UPDATE django_dbq_job j SET
                state = dbq_next_state_v1(e.kind, j.state, e.payload, j.cancel_requested),
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
                run_after = CASE
                    WHEN e.kind IN ('updated', 'retried') AND e.payload ? 'run_after'
                        THEN (e.payload ->> 'run_after')::timestamptz
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
                -- The worker holding the job and until when; cleared when it lets go.
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
                modified = e.at,
                version = e.version
            FROM unnest(events) e
            -- The version test re-checks a row a concurrent writer may have moved on.
            WHERE j.id = e.job_id AND e.kind <> 'created' AND j.version = e.version - 1
            RETURNING j.queue_name, j.state
        )
        SELECT count(*), array_agg(DISTINCT queue_name) FILTER (WHERE state IN ('NEW', 'READY'))
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


-- dbq_notify_waiting_v1: wake idle workers, once per statement: one NOTIFY on
-- channel django_dbq whose payload is a JSON array of the queues in which jobs
-- now wait, or '*' when the list would not fit in a notification.
CREATE OR REPLACE FUNCTION dbq_notify_waiting_v1(queues text[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    IF cardinality(queues) > 0 THEN
        payload := to_jsonb(ARRAY(SELECT DISTINCT unnest(queues)))::text;
        -- NOTIFY payloads must stay under 8000 bytes.
        IF octet_length(payload) > 7900 THEN
            payload := '*';
        END IF;
        PERFORM pg_notify('django_dbq', payload);
    END IF;
END
$$;


-- dbq_apply_statement_v1: the ledger trigger's way into the apply function.
-- It runs with the rights of the tables' owner (SECURITY DEFINER), so roles that
-- may only append events still get their projection rows written; it refuses to
-- be called other than from a trigger. A statement brings few events, and
-- re-planning each query for each exact array costs more than it saves, so the
-- trigger path keeps generic plans; replay calls dbq_apply_events_v1 directly,
-- with plans made for its large rounds.
CREATE OR REPLACE FUNCTION dbq_apply_statement_v1(events django_dbq_jobevent[])
RETURNS text[]
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    IF pg_trigger_depth() = 0 THEN
        RAISE EXCEPTION 'django_dbq: dbq_apply_statement_v1 is for the ledger trigger only'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Append events to django_dbq_jobevent; its trigger applies them.';
    END IF;
    RETURN dbq_apply_events_v1(events);
END
$$;
