-- Installed by migration 0021: retention in batches. Frozen copies of the
-- functions it installs or replaces in place, from events/sql/ledger.sql as it
-- was then.

-- dbq_retire_old_jobs_v2: dbq_retire_old_jobs_v1 in batches. Of the jobs whose
-- id comes after `after_id` (NULL: from the first), the first `max_jobs` in id
-- order (NULL: all of them) are looked at, and those that may go go; returns
-- how many went and the last id looked at (NULL once no job is left to look
-- at). A caller that passes each batch's last id to the next, in a transaction
-- of its own, goes over the projection once, and no batch holds its locks for
-- longer than max_jobs jobs take. Called by dbq_retire_old_jobs_v1 and
-- dbq_delete_old_jobs_v5 only (not granted).
CREATE OR REPLACE FUNCTION @schema@.dbq_retire_old_jobs_v2(
    created_before timestamptz, record_sealed boolean, after_id uuid, max_jobs integer
)
RETURNS TABLE (deleted bigint, last_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    batch text := '';
    kept text := '';
    reference record;
    sealed_below bigint;
BEGIN
    -- One test per single-column foreign key to the projection; regclass text
    -- is schema-qualified (the search_path holds no schema of ours) and quoted.
    FOR reference IN
        SELECT c.conrelid::regclass::text AS referencing, a.attname AS referencing_column
        FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        WHERE c.confrelid = '@schema@.django_dbq_job'::regclass AND c.contype = 'f'
          AND cardinality(c.conkey) = 1
        ORDER BY 1, 2
    LOOP
        kept := kept || format(
            ' AND NOT EXISTS (SELECT FROM %s r WHERE r.%I = j.id)',
            reference.referencing, reference.referencing_column);
    END LOOP;
    -- The events up to the last seal's last are sealed. The lock keeps a seal
    -- from being taken while jobs go (a sealer waits for this transaction), so
    -- no seal covers an event this statement removes; the seal read after it
    -- is the last one only in READ COMMITTED, where each statement sees what
    -- committed before it.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'django_dbq: retention runs in READ COMMITTED, not %', current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state',
                  HINT = 'Call Job.objects.delete_old() (or manage.py delete_old_jobs) outside a REPEATABLE READ or SERIALIZABLE transaction.';
    END IF;
    LOCK TABLE @schema@.django_dbq_seal IN SHARE MODE;
    SELECT s.last_event_id INTO sealed_below FROM @schema@.django_dbq_seal s ORDER BY s.id DESC LIMIT 1;
    IF sealed_below IS NOT NULL AND NOT record_sealed THEN
        kept := kept || format(
            ' AND NOT EXISTS (SELECT FROM @schema@.django_dbq_jobevent e'
            ' WHERE e.job_id = j.id AND e.id <= %s)', sealed_below);
    END IF;
    -- A job whose history no longer matches its chain is kept, with the
    -- evidence: removing it would record its rewritten hashes.
    kept := kept || ' AND NOT EXISTS (SELECT FROM @schema@.django_dbq_jobevent e'
        ' LEFT JOIN @schema@.django_dbq_jobevent p ON p.job_id = e.job_id AND p.version = e.version - 1'
        ' WHERE e.job_id = j.id AND e.hash IS DISTINCT FROM @schema@.dbq_event_hash_v1('
        'p.hash, e.job_id, e.version::integer, e.kind::text, e.payload, e.at))';
    IF max_jobs IS NOT NULL THEN
        IF max_jobs < 1 THEN
            RAISE EXCEPTION 'django_dbq: a retention batch takes at least 1 job, not %', max_jobs
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- The batch: the next max_jobs ids (the primary key, in order).
        SELECT w.id INTO last_id FROM (
            SELECT j.id FROM @schema@.django_dbq_job j
            WHERE after_id IS NULL OR j.id > after_id
            ORDER BY j.id LIMIT max_jobs) w
        ORDER BY w.id DESC LIMIT 1;
        IF last_id IS NULL THEN
            deleted := 0;
            RETURN NEXT;
            RETURN;
        END IF;
        batch := ' AND ($3 IS NULL OR j.id > $3) AND j.id <= $4';
    END IF;
    PERFORM set_config('dbq.retention', 'on', true);
    PERFORM set_config('dbq.applying', 'on', true);
    -- Locking the rows first keeps a job from being requeued by a concurrent
    -- transaction between the choice and the delete.
    EXECUTE format($sql$
        WITH doomed AS (
            SELECT j.id FROM @schema@.django_dbq_job j
            WHERE (j.state IN ('COMPLETE', 'FAILED', 'CANCELLED')
                   OR (j.state = 'STOPPING' AND (j.lease_until IS NULL OR j.lease_until < now())))
              AND j.created < $1 %s %s
            FOR UPDATE OF j
        ), history AS (
            DELETE FROM @schema@.django_dbq_jobevent WHERE job_id IN (SELECT id FROM doomed)
            RETURNING id, hash
        ), retired AS (
            -- Seals cover contiguous id ranges from 1: an event's seal is the
            -- first whose last event id is at or above its own.
            INSERT INTO @schema@.django_dbq_retired (seal_id, retired_at, events, entries, txid)
            SELECT s.id, clock_timestamp(), count(*),
                   string_agg(int8send(h.id) || h.hash, '\x'::bytea ORDER BY h.id),
                   pg_current_xact_id()::text::bigint
            FROM history h
            CROSS JOIN LATERAL (
                SELECT s.id FROM @schema@.django_dbq_seal s
                WHERE s.last_event_id >= h.id ORDER BY s.last_event_id LIMIT 1) s
            WHERE h.id <= $2
            GROUP BY s.id
        )
        DELETE FROM @schema@.django_dbq_job WHERE id IN (SELECT id FROM doomed)
    $sql$, batch, kept)
    USING created_before, COALESCE(sealed_below, 0), after_id, last_id;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    PERFORM set_config('dbq.retention', '', true);
    PERFORM set_config('dbq.applying', '', true);
    RETURN NEXT;
END
$$;


-- dbq_retire_old_jobs_v1: the ledger's retention path. Removes the whole history
-- of every finished job (COMPLETE, FAILED or CANCELLED) created before
-- `created_before`, and of every STOPPING one no live lease holds (as
-- django-db-queue 3.3 removed old STOPPING jobs; one a worker still runs is
-- kept), then its projection row, and returns how many jobs went. It
-- is the only function that opens the ledger's guard (dbq.retention). Granted to
-- the maintenance role only. A job that a row of another table still references
-- through a foreign key (a user model's ForeignKey to Job) is kept, with its
-- history, until that row lets go of it: deleting it would fail the whole
-- statement at commit (Django's foreign keys are checked then), and with it
-- every later run. (A row that comes to reference a doomed job while this runs
-- still fails this run; the next one keeps that job.)
--
-- A job with an event a seal covers (seals.sql) goes only when
-- `record_sealed`: the ids and hashes of its sealed events are then written to
-- django_dbq_retired, one record per seal, unsigned, for the caller to sign in
-- the same transaction (dbq_sign_retired_v1); otherwise the job is kept.
-- Called by dbq_delete_old_jobs_v3 and v4 only (not granted).
CREATE OR REPLACE FUNCTION @schema@.dbq_retire_old_jobs_v1(created_before timestamptz, record_sealed boolean)
RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    -- All of them in one statement: dbq_retire_old_jobs_v2 without a batch.
    RETURN (SELECT r.deleted FROM @schema@.dbq_retire_old_jobs_v2(
        created_before, record_sealed, NULL::uuid, NULL::integer) r);
END
$$;


-- dbq_delete_old_jobs_v5: dbq_delete_old_jobs_v4 in batches (dbq_retire_old_jobs_v2):
-- one batch of `max_jobs` jobs after `after_id` per call, each in a transaction
-- of the caller's with its retirement records signed (Job.objects.delete_old()).
-- Granted to the maintenance role only.
CREATE OR REPLACE FUNCTION @schema@.dbq_delete_old_jobs_v5(
    created_before timestamptz, after_id uuid, max_jobs integer
)
RETURNS TABLE (deleted bigint, last_id uuid)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF max_jobs IS NULL THEN
        RAISE EXCEPTION 'django_dbq: a retention batch needs a number of jobs'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass max_jobs (Job.objects.delete_old() passes DBQ_RETENTION_BATCH), or call dbq_delete_old_jobs_v4 for one statement.';
    END IF;
    RETURN QUERY SELECT r.deleted, r.last_id FROM @schema@.dbq_retire_old_jobs_v2(
        created_before::timestamptz, true, after_id::uuid, max_jobs::integer) r;
END
$$;
