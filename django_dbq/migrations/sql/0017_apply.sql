-- Installed by migration 0017: frozen copies of the functions it installs or
-- replaces in place, from projections/sql/apply.sql as it was then.

-- dbq_job_row_v2: the projection row of a `created` event, the one place where
-- an event's payload becomes a new row. A set-returning SQL function of one row,
-- so that PostgreSQL inlines it into the INSERT of each caller
-- (`INSERT ... SELECT r.* FROM events e, LATERAL dbq_job_row_v2(...) r`), where
-- it costs what writing the columns out there would. Its columns are the
-- table's, in the table's order: a migration that adds a column must add it here.
-- `hash` is the event's (seals.sql): the head of the job's chain.
CREATE OR REPLACE FUNCTION @schema@.dbq_job_row_v2(
    job_id uuid, version integer, payload jsonb, at timestamptz, hash bytea
)
RETURNS SETOF @schema@.django_dbq_job
LANGUAGE sql STABLE AS $$
    SELECT job_id,
           COALESCE(@schema@.dbq_time_v1(payload ->> 'created'), at),
           COALESCE(@schema@.dbq_time_v1(payload ->> 'modified'), at),
           (payload ->> 'name')::varchar,
           COALESCE(payload ->> 'state', 'NEW')::varchar,
           COALESCE(payload ->> 'next_task', '')::varchar,
           NULLIF(payload -> 'workspace', 'null'::jsonb),
           COALESCE(payload ->> 'queue_name', 'default')::varchar,
           COALESCE((payload ->> 'priority')::smallint, 0::smallint),
           @schema@.dbq_time_v1(payload ->> 'run_after'),
           version,
           NULL::varchar,
           NULL::timestamptz,
           COALESCE((payload ->> 'attempts')::integer, 0),
           false,
           NULL::varchar,
           (payload ->> 'unique_key')::varchar,
           hash
$$;


-- dbq_fold_events_v2: apply a set of ledger events to the projection, as sets,
-- and return the queues in which the jobs it touched now wait (NEW or READY).
-- The ledger's statement trigger passes the rows of one INSERT; replay passes one
-- version round at a time. Either way the set holds at most one event per job.
-- The whole set is refused when one event breaks a rule, so a statement never
-- leaves a half-applied batch behind.
CREATE OR REPLACE FUNCTION @schema@.dbq_fold_events_v2(events @schema@.django_dbq_jobevent[])
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
           count(*) FILTER (WHERE @schema@.dbq_event_is_illegal_v2(
               e.kind::text, e.version::integer, e.payload::jsonb, j.id IS NOT NULL,
               j.state::text, j.version::integer, j.cancel_requested::boolean))
    INTO created_count, other_count, illegal_count
    FROM unnest(events) e
    LEFT JOIN @schema@.django_dbq_job j ON j.id = e.job_id;
    IF illegal_count > 0 THEN
        PERFORM @schema@.dbq_refuse_events_v2(events);
    END IF;

    -- Opens the projection's write guard for this function's statements only.
    PERFORM set_config('dbq.applying', 'on', true);

    IF created_count > 0 THEN
        WITH added AS (
            INSERT INTO @schema@.django_dbq_job
            SELECT r.*
            FROM unnest(events) e,
                 LATERAL @schema@.dbq_job_row_v2(
                     e.job_id::uuid, e.version::integer, e.payload::jsonb, e.at::timestamptz,
                     e.hash::bytea) r
            WHERE e.kind = 'created'
            RETURNING queue_name, state
        )
        SELECT array_agg(DISTINCT queue_name::text) FILTER (WHERE state IN ('NEW', 'READY'))
        INTO waiting
        FROM added;
    END IF;

    IF other_count > 0 THEN
        WITH updated AS (
            -- Workers' events carry the workspace and next task they leave behind;
            -- `updated` carries exactly the fields a save() changed.
            UPDATE @schema@.django_dbq_job j SET
                state = @schema@.dbq_next_state_v2(
                    e.kind::text, j.state::text, e.payload::jsonb, j.cancel_requested::boolean),
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
                -- A save may set when the job was enqueued (django-db-queue's way
                -- to age a job); the claim order and retention read it.
                created = CASE WHEN e.kind = 'updated' AND e.payload ? 'created'
                               THEN @schema@.dbq_time_v1(e.payload ->> 'created') ELSE j.created END,
                run_after = CASE
                    WHEN e.kind IN ('updated', 'retried') AND e.payload ? 'run_after'
                        THEN @schema@.dbq_time_v1(e.payload ->> 'run_after')
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
                -- The worker holding the job, until when, and the hash of the
                -- key it proves itself with; cleared when it lets go.
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
                lease_key = CASE
                    WHEN e.kind = 'claimed' THEN e.payload ->> 'lease_key'
                    WHEN e.kind IN ('stopping', 'lease_renewed', 'updated', 'cancel_requested')
                        THEN j.lease_key
                    END,
                modified = e.at,
                version = e.version,
                -- The head of the job's hash chain (seals.sql).
                head = e.hash
            FROM unnest(events) e
            -- The version test re-checks a row a concurrent writer may have moved on.
            WHERE j.id = e.job_id AND e.kind <> 'created' AND j.version = e.version - 1
            RETURNING j.queue_name, j.state
        )
        SELECT count(*), array_agg(DISTINCT queue_name::text) FILTER (WHERE state IN ('NEW', 'READY'))
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


-- dbq_apply_events_v5: the AFTER INSERT ... FOR EACH STATEMENT trigger function
-- of django_dbq_jobevent (transition table new_events). It applies the
-- statement's events to the projection and wakes idle workers with one NOTIFY:
-- a JSON array of the distinct queues in which jobs now wait, or '*' when it
-- would not fit. It runs with the rights of the tables' owner, so that roles
-- that append through the ledger's functions get their rows written; EXECUTE is
-- granted to no role, so no other table's trigger can be made to call it, and
-- it refuses to run for any table but the ledger or in any other way than the
-- ledger's own trigger: the rows it applies are those PostgreSQL passes it.
-- A statement brings few events, and re-planning each query for each statement
-- costs more than it saves, so plans stay generic.
CREATE OR REPLACE FUNCTION @schema@.dbq_apply_events_v5()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    waiting text[];
    payload text;
BEGIN
    IF TG_TABLE_NAME <> 'django_dbq_jobevent' OR TG_TABLE_SCHEMA <> @schema_literal@
       OR TG_OP <> 'INSERT' OR TG_LEVEL <> 'STATEMENT' OR TG_WHEN <> 'AFTER' THEN
        RAISE EXCEPTION 'django_dbq: dbq_apply_events_v5 is the trigger function of django_dbq_jobevent alone'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- Opens the projection's write guard for this function's statements only.
    PERFORM set_config('dbq.applying', 'on', true);
    IF NOT EXISTS (
        SELECT FROM new_events e
        WHERE e.kind <> 'created' OR e.version <> 1
           OR COALESCE(e.payload ->> 'state', 'NEW') NOT IN
               ('NEW', 'READY', 'PROCESSING', 'STOPPING', 'FAILED', 'COMPLETE')
    ) THEN
        -- Only new jobs, each created at version 1 in a known state: the rows
        -- need no look at the projection (a job created twice is refused by the
        -- ledger's unique (job_id, version)).
        WITH added AS (
            INSERT INTO @schema@.django_dbq_job
            SELECT r.*
            FROM new_events e,
                 LATERAL @schema@.dbq_job_row_v2(
                     e.job_id::uuid, e.version::integer, e.payload::jsonb, e.at::timestamptz,
                     e.hash::bytea) r
            RETURNING queue_name, state
        )
        SELECT array_agg(DISTINCT queue_name::text) FILTER (WHERE state IN ('NEW', 'READY'))
        INTO waiting
        FROM added;
    ELSE
        waiting := @schema@.dbq_fold_events_v2(
            ARRAY(SELECT e::@schema@.django_dbq_jobevent FROM new_events e));
        -- Inserted and updated jobs may name a queue twice between them.
        IF cardinality(waiting) > 1 THEN
            waiting := ARRAY(SELECT DISTINCT unnest(waiting));
        END IF;
    END IF;
    PERFORM set_config('dbq.applying', '', true);
    IF cardinality(waiting) > 0 THEN
        payload := to_jsonb(waiting)::text;
        -- NOTIFY payloads must stay under 8000 bytes.
        PERFORM pg_notify('django_dbq', CASE WHEN octet_length(payload) > 7900 THEN '*' ELSE payload END);
    END IF;
    RETURN NULL;
END
$$;
