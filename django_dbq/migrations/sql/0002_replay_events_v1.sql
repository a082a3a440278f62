-- dbq_replay_events_v1: rebuild the projection from the ledger and return the
-- number of events applied. It empties django_dbq_job, then applies the events
-- round by round (every job's version-1 event as one set, then every version-2
-- event, and so on) through the apply function the ledger trigger uses, so live
-- and replayed projections cannot be computed differently.
--
-- `until` limits the rebuild to the events recorded up to that time (the
-- projection as it was then), and `job_ids` to those jobs (their rows alone are
-- rebuilt); callers that rebuild the past do so in a transaction they roll back.
--
-- A full rebuild's rounds are large, so their plans are made for each round's real
-- size, and the projection's secondary indexes are dropped for it and made again
-- once over the final rows (inside the caller's transaction: a failure restores them).
CREATE OR REPLACE FUNCTION dbq_replay_events_v1(
    until timestamptz DEFAULT NULL, job_ids uuid[] DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    round record;
    index_definitions text[];
    definition text;
    total bigint := 0;
BEGIN
    PERFORM set_config('dbq.applying', 'on', true);
    IF job_ids IS NULL THEN
        TRUNCATE django_dbq_job;
    ELSE
        DELETE FROM django_dbq_job WHERE id = ANY(job_ids);
    END IF;
    PERFORM set_config('dbq.applying', '', true);

    IF job_ids IS NULL THEN
        -- Indexes that back a constraint (the primary key among them) stay.
        SELECT array_agg(pg_get_indexdef(i.indexrelid)) INTO index_definitions
        FROM pg_index i
        WHERE i.indrelid = 'django_dbq_job'::regclass
          AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid);
        FOR definition IN
            SELECT i.indexrelid::regclass::text
            FROM pg_index i
            WHERE i.indrelid = 'django_dbq_job'::regclass
              AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        LOOP
            EXECUTE 'DROP INDEX ' || definition;
        END LOOP;
    END IF;

    FOR round IN
        SELECT array_agg(e ORDER BY e.job_id) AS events
        FROM django_dbq_jobevent e
        WHERE (until IS NULL OR e.at <= until)
          AND (job_ids IS NULL OR e.job_id = ANY(job_ids))
        GROUP BY e.version
        ORDER BY e.version
    LOOP
        PERFORM dbq_apply_events_v1(round.events);
        total := total + cardinality(round.events);
    END LOOP;

    FOREACH definition IN ARRAY COALESCE(index_definitions, '{}') LOOP
        EXECUTE definition;
    END LOOP;
    RETURN total;
END
$$;
