-- dbq_replay_events_v1: rebuild the projection from the ledger and return the
-- number of events applied. It empties django_dbq_job, then applies the events
-- round by round (every job's version-1 event as one set, then every version-2
-- event, and so on) through the apply function the ledger trigger uses, so live
-- and replayed projections cannot be computed differently.
CREATE OR REPLACE FUNCTION dbq_replay_events_v1()
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    round record;
    total bigint := 0;
BEGIN
    PERFORM set_config('dbq.applying', 'on', true);
    TRUNCATE django_dbq_job;
    PERFORM set_config('dbq.applying', '', true);
    FOR round IN
        SELECT array_agg(e ORDER BY e.job_id) AS events
        FROM django_dbq_jobevent e
        GROUP BY e.version
        ORDER BY e.version
    LOOP
        PERFORM dbq_apply_events_v1(round.events);
        total := total + cardinality(round.events);
    END LOOP;
    RETURN total;
END
$$;
