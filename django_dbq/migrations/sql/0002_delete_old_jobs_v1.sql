-- dbq_delete_old_jobs_v1: the ledger's retention path. Removes the whole history
-- of every finished job (COMPLETE, FAILED or CANCELLED) created before `created_before`,
-- then its projection row, and returns how many jobs went. It is the only code
-- that sets dbq.retention, the flag under which the ledger accepts a DELETE.
-- It runs with the rights of the tables' owner; migration 0002 revokes EXECUTE
-- from PUBLIC, so only the owner and roles granted it (a maintenance role) run it.
CREATE OR REPLACE FUNCTION dbq_delete_old_jobs_v1(created_before timestamptz)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    deleted bigint;
BEGIN
    PERFORM set_config('dbq.retention', 'on', true);
    PERFORM set_config('dbq.applying', 'on', true);
    -- Locking the rows first keeps a job from being requeued by a concurrent
    -- transaction between the choice and the delete.
    WITH doomed AS (
        SELECT id FROM django_dbq_job
        WHERE state IN ('COMPLETE', 'FAILED', 'CANCELLED') AND created < created_before
        FOR UPDATE
    ), history AS (
        DELETE FROM django_dbq_jobevent WHERE job_id IN (SELECT id FROM doomed)
    )
    DELETE FROM django_dbq_job WHERE id IN (SELECT id FROM doomed);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    PERFORM set_config('dbq.retention', '', true);
    PERFORM set_config('dbq.applying', '', true);
    RETURN deleted;
END
$$;
