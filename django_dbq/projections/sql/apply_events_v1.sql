-- The state machine and the apply function of the django_dbq_job projection.
-- Installed by migration 0002; a released function is never edited in place:
-- a change ships as dbq_..._v2 with a migration.

-- dbq_next_state_v1: the state a job moves to when an event of `kind` is applied
-- to it in `state`, or NULL when the transition is illegal. The single statement
-- of the state machine: the apply function checks and applies through it.
CREATE OR REPLACE FUNCTION dbq_next_state_v1(kind text, state text, payload jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN kind = 'claimed' AND state IN ('NEW', 'READY') THEN 'PROCESSING'
        WHEN kind = 'task_done' AND state IN ('PROCESSING', 'STOPPING') THEN 'READY'
        WHEN kind = 'completed' AND state IN ('PROCESSING', 'STOPPING') THEN 'COMPLETE'
        WHEN kind = 'failed' AND state IN ('PROCESSING', 'STOPPING') THEN 'FAILED'
        WHEN kind = 'stopping' AND state = 'PROCESSING' THEN 'STOPPING'
        WHEN kind = 'lease_renewed' AND state IN ('PROCESSING', 'STOPPING') THEN state
        WHEN kind = 'lease_expired' AND state IN ('PROCESSING', 'STOPPING') THEN 'READY'
        -- A worker gives back a job it claimed but did not start, in the state it had.
        WHEN kind = 'released' AND state = 'PROCESSING'
            AND payload ->> 'state' IN ('NEW', 'READY') THEN payload ->> 'state'
        -- `updated` keeps the state unless it names one; a job a worker holds
        -- (PROCESSING, STOPPING) changes state only through the worker's events,
        -- and no save() may put a job into a worker's states.
        WHEN kind = 'updated' AND (NOT payload ? 'state' OR payload ->> 'state' = state)
            THEN state
        WHEN kind = 'updated'
            AND state IN ('NEW', 'READY', 'FAILED', 'COMPLETE')
            AND payload ->> 'state' IN ('NEW', 'READY', 'FAILED', 'COMPLETE')
            THEN payload ->> 'state'
    END
$$;


-- dbq_apply_events_v1: apply a set of ledger events to the projection, as sets.
-- The ledger's statement trigger passes the rows of one INSERT; replay passes one
-- version round at a time. Either way the set holds at most one event per job.
-- The whole set is refused when one event breaks a rule, so a statement never
-- leaves a half-applied batch behind.
CREATE OR REPLACE FUNCTION dbq_apply_events_v1(events django_dbq_jobevent[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    bad record;
    expected bigint;
    applied bigint;
BEGIN
    SELECT e.job_id, e.kind, e.version, j.id IS NOT NULL AS job_exists,
           j.state, j.version AS job_version, e.payload ->> 'state' AS wanted_state
    INTO bad
    FROM unnest(events) e
    LEFT JOIN django_dbq_job j ON j.id = e.job_id
    WHERE CASE
        WHEN e.kind = 'created' THEN
            j.id IS NOT NULL OR e.version <> 1
            OR COALESCE(e.payload ->> 'state', 'NEW') NOT IN
                ('NEW', 'READY', 'PROCESSING', 'STOPPING', 'FAILED', 'COMPLETE')
        ELSE
            j.id IS NULL OR e.version <> j.version + 1
            OR dbq_next_state_v1(e.kind, j.state, e.payload) IS NULL
    END
    LIMIT 1;

    IF FOUND THEN
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
    END IF;

    -- Opens the projection's write guard for this function's statements only.
    PERFORM set_config('dbq.applying', 'on', true);

    INSERT INTO django_dbq_job (
        id, created, modified, name, state, next_task, workspace,
        queue_name, priority, run_after, version, claimed_by, lease_until
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
           NULL
    FROM unnest(events) e
    WHERE e.kind = 'created';

    SELECT count(*) INTO expected FROM unnest(events) e WHERE e.kind <> 'created';
    IF expected > 0 THEN
        -- Workers' events carry the workspace and next task they leave behind;
        -- `updated` carries exactly the fields a save() changed.
        UPDATE django_dbq_job j SET
            state = dbq_next_state_v1(e.kind, j.state, e.payload),
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
            run_after = CASE WHEN e.kind = 'updated' AND e.payload ? 'run_after'
                             THEN (e.payload ->> 'run_after')::timestamptz ELSE j.run_after END,
            -- The worker holding the job and until when; cleared when it lets go.
            claimed_by = CASE
                WHEN e.kind = 'claimed' THEN e.payload ->> 'worker'
                WHEN e.kind IN ('stopping', 'lease_renewed', 'updated') THEN j.claimed_by
                END,
            lease_until = CASE
                WHEN e.kind IN ('claimed', 'lease_renewed')
                    THEN (e.payload ->> 'lease_until')::timestamptz
                WHEN e.kind IN ('stopping', 'updated') THEN j.lease_until
                END,
            modified = e.at,
            version = e.version
        FROM unnest(events) e
        -- The version test re-checks the row a concurrent writer may have moved on.
        WHERE j.id = e.job_id AND e.kind <> 'created' AND j.version = e.version - 1;
        GET DIAGNOSTICS applied = ROW_COUNT;
        IF applied <> expected THEN
            RAISE EXCEPTION 'django_dbq: % of % events found their job at the expected version', applied, expected
                USING ERRCODE = 'serialization_failure';
        END IF;
    END IF;

    PERFORM set_config('dbq.applying', '', true);
END
$$;


-- dbq_notify_ready_v1: wake idle workers, once per statement. Sends one NOTIFY on
-- channel django_dbq naming the queues (a JSON array) in which the given jobs now
-- wait (NEW or READY, due now or later), or '*' when the list would not fit in a
-- notification's payload.
CREATE OR REPLACE FUNCTION dbq_notify_ready_v1(job_ids uuid[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    queues jsonb;
    payload text;
BEGIN
    SELECT jsonb_agg(DISTINCT j.queue_name) INTO queues
    FROM django_dbq_job j
    WHERE j.id = ANY(job_ids) AND j.state IN ('NEW', 'READY');
    IF queues IS NOT NULL THEN
        payload := queues::text;
        -- NOTIFY payloads must stay under 8000 bytes.
        IF octet_length(payload) > 7900 THEN
            payload := '*';
        END IF;
        PERFORM pg_notify('django_dbq', payload);
    END IF;
END
$$;
