-- The queue projection's side of the queue ledger: how queue events fold into
-- django_dbq_queue rows, the queue ledger's trigger function, the projection's
-- guard and replay. What is installed now (migration 0013); @schema@ and the
-- search_path rule are explained at the top of apply.sql. The events are
-- appended by the functions of events/sql/queues.sql.
--
-- A row of django_dbq_queue is a queue's state after its last event: paused or
-- not, with that event's reason (NULL after a resumption), `by`, role and time
-- (`since`), and its version. A queue never paused has no row, and is not
-- paused. The audit reads (verify) rebuild it into pg_temp.dbq_scratch_queue
-- through functions generated from these (projections/scratch.py).

-- dbq_queue_event_is_illegal_v1: whether a queue event breaks a rule, given the
-- queue's row (paused, version; NULL for a queue without one) as it is before
-- the event: its version must follow the queue's, and only a queue that is not
-- paused may be paused, only a paused one resumed.
CREATE OR REPLACE FUNCTION @schema@.dbq_queue_event_is_illegal_v1(
    kind text, version integer, paused boolean, queue_version integer
)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT version IS DISTINCT FROM COALESCE(queue_version, 0) + 1
        OR NOT CASE kind
            WHEN 'paused' THEN paused IS NOT TRUE
            WHEN 'resumed' THEN paused IS TRUE
            ELSE false
        END
$$;


-- dbq_refuse_queue_events_v1: raise the error for the first queue event of the
-- set that breaks a rule. Called by the fold only once it has counted one.
CREATE OR REPLACE FUNCTION @schema@.dbq_refuse_queue_events_v1(events @schema@.django_dbq_queueevent[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT e.queue_name, e.kind, e.version, q.paused, q.version AS queue_version
    INTO bad
    FROM unnest(events) e
    LEFT JOIN @schema@.django_dbq_queue q ON q.name = e.queue_name
    WHERE @schema@.dbq_queue_event_is_illegal_v1(
        e.kind::text, e.version::integer, q.paused::boolean, q.version::integer)
    LIMIT 1;

    IF bad.version IS DISTINCT FROM COALESCE(bad.queue_version, 0) + 1 THEN
        RAISE EXCEPTION 'django_dbq: % event for queue % has version %, expected %', bad.kind, bad.queue_name, bad.version, COALESCE(bad.queue_version, 0) + 1
            USING ERRCODE = 'check_violation',
                  HINT = 'Pause and resume queues through django_dbq so that each queue''s versions follow each other.';
    ELSIF bad.kind IS NULL OR bad.kind NOT IN ('paused', 'resumed') THEN
        RAISE EXCEPTION 'django_dbq: a queue event is paused or resumed, not %', COALESCE(bad.kind, 'NULL')
            USING ERRCODE = 'check_violation';
    ELSE
        RAISE EXCEPTION 'django_dbq: illegal transition: % event on queue %, which is %', bad.kind, bad.queue_name,
            CASE WHEN bad.paused THEN 'paused' ELSE 'not paused' END
            USING ERRCODE = 'check_violation';
    END IF;
END
$$;


-- dbq_fold_queue_events_v1: apply a set of queue events (at most one per
-- queue) to the projection, and return the queues it resumed. The queue
-- ledger's trigger passes the rows of one INSERT; replay passes one version
-- round at a time. The whole set is refused when one event breaks a rule.
CREATE OR REPLACE FUNCTION @schema@.dbq_fold_queue_events_v1(events @schema@.django_dbq_queueevent[])
RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    illegal_count bigint;
    applied bigint;
    resumed text[];
BEGIN
    SELECT count(*)
    INTO illegal_count
    FROM unnest(events) e
    LEFT JOIN @schema@.django_dbq_queue q ON q.name = e.queue_name
    WHERE @schema@.dbq_queue_event_is_illegal_v1(
        e.kind::text, e.version::integer, q.paused::boolean, q.version::integer);
    IF illegal_count > 0 THEN
        PERFORM @schema@.dbq_refuse_queue_events_v1(events);
    END IF;

    -- Opens the projection's write guard for this function's statements only.
    PERFORM set_config('dbq.applying', 'on', true);
    WITH folded AS (
        INSERT INTO @schema@.django_dbq_queue AS q (name, paused, reason, by, role, since, version)
        SELECT e.queue_name, e.kind = 'paused',
               CASE WHEN e.kind = 'paused' THEN COALESCE(e.payload ->> 'reason', '') END,
               e.payload ->> 'by', COALESCE(e.payload ->> 'role', ''), e.at, e.version
        FROM unnest(events) e
        ON CONFLICT (name) DO UPDATE SET
            paused = excluded.paused, reason = excluded.reason, by = excluded.by,
            role = excluded.role, since = excluded.since, version = excluded.version
        -- The version test re-checks a row a concurrent writer may have moved on.
        WHERE q.version = excluded.version - 1
        RETURNING q.name, q.paused
    )
    SELECT count(*), array_agg(f.name::text) FILTER (WHERE NOT f.paused)
    INTO applied, resumed
    FROM folded f;
    IF applied <> cardinality(events) THEN
        RAISE EXCEPTION 'django_dbq: % of % queue events found their queue at the expected version', applied, cardinality(events)
            USING ERRCODE = 'serialization_failure';
    END IF;
    PERFORM set_config('dbq.applying', '', true);
    RETURN resumed;
END
$$;


-- dbq_apply_queue_events_v1: the AFTER INSERT ... FOR EACH STATEMENT trigger
-- function of django_dbq_queueevent (transition table new_events). It applies
-- the statement's events to django_dbq_queue and wakes the idle workers of the
-- queues it resumed with one NOTIFY on the workers' channel, a JSON array of
-- those queues, as the job ledger's trigger does for queues in which jobs now
-- wait. It runs with the rights of the tables' owner and, like
-- dbq_apply_events_v5, refuses to run for any table but the queue ledger.
CREATE OR REPLACE FUNCTION @schema@.dbq_apply_queue_events_v1()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    resumed text[];
    payload text;
BEGIN
    IF TG_TABLE_NAME <> 'django_dbq_queueevent' OR TG_TABLE_SCHEMA <> @schema_literal@
       OR TG_OP <> 'INSERT' OR TG_LEVEL <> 'STATEMENT' OR TG_WHEN <> 'AFTER' THEN
        RAISE EXCEPTION 'django_dbq: dbq_apply_queue_events_v1 is the trigger function of django_dbq_queueevent alone'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- A pause of a paused queue (ON CONFLICT DO NOTHING) inserts no row.
    IF NOT EXISTS (SELECT FROM new_events) THEN
        RETURN NULL;
    END IF;
    resumed := @schema@.dbq_fold_queue_events_v1(
        ARRAY(SELECT e::@schema@.django_dbq_queueevent FROM new_events e));
    IF cardinality(resumed) > 0 THEN
        payload := to_jsonb(resumed)::text;
        -- NOTIFY payloads must stay under 8000 bytes.
        PERFORM pg_notify('django_dbq', CASE WHEN octet_length(payload) > 7900 THEN '*' ELSE payload END);
    END IF;
    RETURN NULL;
END
$$;


-- dbq_protect_queue_projection_v1: the BEFORE ... FOR EACH STATEMENT trigger
-- function that refuses every write to django_dbq_queue not made by the fold
-- and replay functions, which open the guard for their own statements
-- (dbq.applying); as dbq_protect_projection_v2, it opens only for a current
-- user holding TRUNCATE on the table with the grant option: the owner.
CREATE OR REPLACE FUNCTION @schema@.dbq_protect_queue_projection_v1()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_catalog.current_setting('dbq.applying', true) = 'on'
       AND pg_catalog.has_table_privilege(TG_RELID, 'TRUNCATE WITH GRANT OPTION')
    THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'django_dbq: django_dbq_queue is a projection of the queue ledger; % on it is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Pause and resume queues with manage.py pause_queue and resume_queue (django_dbq.queues).';
END
$$;


-- dbq_replay_queue_events_v1: rebuild django_dbq_queue from the queue ledger
-- and return the number of events applied: every queue's version-1 event as one
-- set, then every version-2 event, and so on, through dbq_fold_queue_events_v1,
-- the function the queue ledger's trigger applies events with. The queue
-- ledger is small (a row per pause and resumption), so it is read in one pass.
-- Runs with the caller's rights (replay_events: the tables' owner), pinned as
-- the owner's SECURITY DEFINER functions are.
CREATE OR REPLACE FUNCTION @schema@.dbq_replay_queue_events_v1()
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    round record;
    total bigint := 0;
BEGIN
    PERFORM set_config('dbq.applying', 'on', true);
    TRUNCATE @schema@.django_dbq_queue;
    PERFORM set_config('dbq.applying', '', true);
    FOR round IN
        SELECT array_agg(e) AS events
        FROM @schema@.django_dbq_queueevent e
        GROUP BY e.version
        ORDER BY e.version
    LOOP
        PERFORM @schema@.dbq_fold_queue_events_v1(round.events);
        total := total + cardinality(round.events);
    END LOOP;
    RETURN total;
END
$$;
