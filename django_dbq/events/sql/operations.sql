-- Operators' actions on jobs, each one statement appending events, run with the
-- tables' owner's rights like the worker's functions (sql/worker.sql) and
-- granted to the app role. What is installed now (migration 0007).

-- dbq_cancel_jobs_v2: cancel jobs. A waiting job (NEW, READY) is cancelled at
-- once (`cancelled`); a running one (PROCESSING, STOPPING) is asked to stop after
-- its current task (`cancel_requested`), which the worker's next event for it turns
-- into CANCELLED. Finished jobs are left alone. Returns each job acted on and the
-- event appended.
CREATE OR REPLACE FUNCTION @schema@.dbq_cancel_jobs_v2(job_ids uuid[], reason text)
RETURNS TABLE (job_id uuid, kind text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH target AS (
        SELECT j.id, j.version, j.state
        FROM @schema@.django_dbq_job j
        WHERE j.id = ANY(job_ids)
          AND (j.state IN ('NEW', 'READY')
               OR (j.state IN ('PROCESSING', 'STOPPING') AND NOT j.cancel_requested))
        FOR NO KEY UPDATE
    )
    INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
    SELECT t.id, t.version + 1,
           CASE WHEN t.state IN ('NEW', 'READY') THEN 'cancelled' ELSE 'cancel_requested' END,
           jsonb_build_object('reason', reason)
    FROM target t
    RETURNING job_id, kind::text;
END
$$;


-- dbq_requeue_jobs_v2: put FAILED and CANCELLED jobs back in their queue
-- (`requeued`): READY at once, from the task that failed or was next, with the
-- workspace as it was and the attempt count at zero. Returns the jobs requeued.
CREATE OR REPLACE FUNCTION @schema@.dbq_requeue_jobs_v2(job_ids uuid[], reason text)
RETURNS TABLE (job_id uuid, kind text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH target AS (
        SELECT j.id, j.version
        FROM @schema@.django_dbq_job j
        WHERE j.id = ANY(job_ids) AND j.state IN ('FAILED', 'CANCELLED')
        FOR NO KEY UPDATE
    )
    INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
    SELECT t.id, t.version + 1, 'requeued', jsonb_build_object('reason', reason)
    FROM target t
    RETURNING job_id, kind::text;
END
$$;


-- dbq_release_jobs_v1: an operator returns running jobs (PROCESSING, STOPPING)
-- to their queue before their lease runs out, because their worker is known to
-- be gone (`lease_revoked`, naming the holder and the reason): READY, or
-- CANCELLED if a cancel is pending, as after a lease expiry. The holder can no
-- longer record anything for them. Returns the jobs released.
CREATE OR REPLACE FUNCTION @schema@.dbq_release_jobs_v1(job_ids uuid[], reason text)
RETURNS TABLE (job_id uuid, kind text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH target AS (
        SELECT j.id, j.version, j.claimed_by, j.lease_until
        FROM @schema@.django_dbq_job j
        WHERE j.id = ANY(job_ids) AND j.state IN ('PROCESSING', 'STOPPING')
        FOR NO KEY UPDATE
    )
    INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
    SELECT t.id, t.version + 1, 'lease_revoked', jsonb_build_object(
        'worker', t.claimed_by, 'lease_until', t.lease_until, 'reason', reason,
        'by', session_user)
    FROM target t
    RETURNING job_id, kind::text;
END
$$;
