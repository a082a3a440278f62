-- The queue ledger's guard and the ways into it: pausing and resuming a queue.
-- What is installed now (migration 0013); @schema@ and the search_path rule
-- are explained at the top of projections/sql/apply.sql.
--
-- django_dbq_queueevent holds one row per pause or resumption of a queue,
-- numbered per queue by `version`; its trigger (projections/sql/queues.sql)
-- keeps django_dbq_queue, the queues' current state, which the claim functions
-- read (sql/worker.sql). No role but the tables' owner holds a write right on
-- either table: the application appends through the functions below, which
-- run with the owner's rights (SECURITY DEFINER) and are granted to the app role.
--
-- Event kinds (payload: reason, by, role):
--   paused:  occurs when an operator pauses a queue that is not paused;
--            workers claim nothing from it until it is resumed.
--   resumed: occurs when an operator resumes a paused queue; its idle workers
--            are woken at once.

-- dbq_protect_queue_ledger_v1: the BEFORE UPDATE OR DELETE OR TRUNCATE ... FOR
-- EACH STATEMENT trigger function of django_dbq_queueevent: the queue ledger is
-- append-only, with no retention path (pauses are few, and each stays part of
-- the record). Only a test suite's flush (django_dbq.testing.allow_flush) may
-- TRUNCATE it, as the tables' owner with dbq.retention set; no role below the
-- owner opens it with a setting.
CREATE OR REPLACE FUNCTION @schema@.dbq_protect_queue_ledger_v1()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE'
       AND pg_catalog.current_setting('dbq.retention', true) = 'on'
       AND (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = TG_RELID)
           = current_user::text::regrole
    THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'django_dbq: the queue ledger is append-only; % on django_dbq_queueevent is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Pause and resume queues with manage.py pause_queue and resume_queue.';
END
$$;


-- dbq_check_queue_change_v1: raise unless the arguments of a pause or
-- resumption fit: a queue name of 1 to 20 characters (Job.queue_name's
-- length), a reason of at most 1000 and a `by` of at most 200.
CREATE OR REPLACE FUNCTION @schema@.dbq_check_queue_change_v1(
    p_queue_name text, p_reason text, p_by text
)
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_queue_name IS NULL OR length(p_queue_name) NOT BETWEEN 1 AND 20 THEN
        RAISE EXCEPTION 'django_dbq: a queue name has 1 to 20 characters, not %', COALESCE(length(p_queue_name), 0)
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF length(p_reason) > 1000 THEN
        RAISE EXCEPTION 'django_dbq: a pause''s reason has at most 1000 characters, not %', length(p_reason)
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF length(p_by) > 200 THEN
        RAISE EXCEPTION 'django_dbq: `by` has at most 200 characters, not %', length(p_by)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;


-- dbq_pause_queue_v1: pause a queue (a `paused` event), unless it is paused
-- already: then nothing is appended and no row returned (pausing is
-- idempotent; the first pause's reason stands). `p_by` is who the caller says
-- it is; `role` records the database's session user, which the caller cannot
-- choose. Returns the event's version and time (epoch seconds).
--
-- Two callers pausing (or resuming) the same queue at once both compute the
-- same next version: the ledger's unique (queue_name, version) makes the
-- second wait for the first and then append nothing (ON CONFLICT DO NOTHING),
-- which is right, since from either state only one kind is legal: the two
-- would have appended the same change. No lock is taken on a queue's row,
-- which a queue never paused does not have.
CREATE OR REPLACE FUNCTION @schema@.dbq_pause_queue_v1(p_queue_name text, p_reason text, p_by text)
RETURNS TABLE (version integer, at float8)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM @schema@.dbq_check_queue_change_v1(p_queue_name::text, p_reason::text, p_by::text);
    RETURN QUERY
    INSERT INTO @schema@.django_dbq_queueevent AS e (queue_name, version, kind, payload)
    SELECT p_queue_name, COALESCE(q.version, 0) + 1, 'paused', jsonb_build_object(
        'reason', COALESCE(p_reason, ''), 'by', p_by, 'role', session_user)
    FROM (VALUES (p_queue_name)) AS asked (name)
    LEFT JOIN @schema@.django_dbq_queue q ON q.name = asked.name
    WHERE q.paused IS NOT TRUE
    ON CONFLICT (queue_name, version) DO NOTHING
    RETURNING e.version::integer, extract(epoch FROM e.at)::float8;
END
$$;


-- dbq_resume_queue_v1: resume a paused queue (a `resumed` event; the ledger's
-- trigger wakes its idle workers), or, when it is not paused, append nothing
-- and return no row. Otherwise as dbq_pause_queue_v1.
CREATE OR REPLACE FUNCTION @schema@.dbq_resume_queue_v1(p_queue_name text, p_by text)
RETURNS TABLE (version integer, at float8)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM @schema@.dbq_check_queue_change_v1(p_queue_name::text, NULL::text, p_by::text);
    RETURN QUERY
    INSERT INTO @schema@.django_dbq_queueevent AS e (queue_name, version, kind, payload)
    SELECT q.name, q.version + 1, 'resumed', jsonb_build_object('by', p_by, 'role', session_user)
    FROM @schema@.django_dbq_queue q
    WHERE q.name = p_queue_name AND q.paused
    ON CONFLICT (queue_name, version) DO NOTHING
    RETURNING e.version::integer, extract(epoch FROM e.at)::float8;
END
$$;
